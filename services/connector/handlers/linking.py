"""Linking a bank: activation, the webview's callback (in the order of issue #17: the state, the
connection at the aggregator, the code's owner, then the state used up), and reconnection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlencode

from services.connector.domain.accounts import accounts_linked, follow_bank_accounts
from services.connector.domain.connections import (
    AggregatorConnection,
    AggregatorUser,
    Connection,
    WebviewLink,
    linked_connection,
)
from services.connector.domain.failures import AggregatorError
from services.connector.domain.secrets import InvalidState, StateSigner, TokenCipher
from services.connector.handlers.common import (
    ConnectorConfig,
    activation_used,
    aggregator_call,
    announce_followed,
    event_of,
    log,
    not_linked,
    unknown_connection,
    user_token,
)
from services.connector.handlers.gate import SyncGate
from services.connector.handlers.syncs import Syncs
from services.connector.ports import Aggregator, Announcer, ConnectorStore
from shared.contract.envelope import deterministic_event_id
from shared.contract.payloads import Bank, ConnectionLinked, ConnectionStateChanged
from shared.contract.topics import CONNECTIONS
from shared.problems import Problem


class Linking:
    def __init__(
        self,
        store: ConnectorStore,
        aggregator: Aggregator,
        gate: SyncGate,
        announcer: Announcer,
        cipher: TokenCipher,
        signer: StateSigner,
        syncs: Syncs,
        config: ConnectorConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.gate = gate
        self.announcer = announcer
        self.cipher = cipher
        self.signer = signer
        self.syncs = syncs
        self.config = config
        self.clock = clock
        self._bank_names: dict[str, str] = {}

    async def owned_connection(self, user_id: str, connection_id: str) -> Connection:
        found = await self.store.connection(user_id, connection_id)
        if found is None or found.removed:
            raise unknown_connection(connection_id)
        return found

    async def _webview(self, user_id: str, token: str, page: str, **extra: str) -> WebviewLink:
        """A signed, single-use state recorded for the user, and the aggregator's webview URL with it."""
        code = await aggregator_call(self.aggregator.temporary_code(token))
        state, issued = self.signer.issue(user_id)
        await self.store.record_activation(issued.nonce, user_id, self.clock())
        query = urlencode(
            {
                "client_id": self.aggregator.client_id,
                "redirect_uri": self.config.callback_url,
                "state": state,
                "code": code,
                **extra,
            }
        )
        return WebviewLink(f"{self.config.aggregator_public_url}/2.0/auth/webview/{page}?{query}", state)

    # --- activation --------------------------------------------------------------------------
    async def activate(self, user_id: str, correlation_id: str) -> WebviewLink:
        await self.gate.require_entitled(user_id)
        existing = await self.store.aggregator_user(user_id)
        if existing is None:
            token, id_user = await aggregator_call(self.aggregator.create_user())
            existing = await self.store.save_aggregator_user(
                AggregatorUser(user_id, self.cipher.encrypt(token, user_id), id_user), self.clock()
            )
        link = await self._webview(user_id, self.cipher.decrypt(existing.token_enc, user_id), "connect")
        log.info("activation_started", user_id=user_id)
        return link

    async def callback(self, connection_id: str, state: str, code: str, correlation_id: str) -> Connection:
        """Back from the webview. The signed `state` names the user; the `code` is exchanged at the
        aggregator (once, with our client's credentials) and must belong to that user's aggregator user;
        only then is the state used up. An attempt that fails (no or a wrong code, a connection the user
        does not have) leaves the state for the real redirect; a used state answers 409, never data."""
        try:
            activation = self.signer.verify(state)
        except InvalidState as exc:
            raise Problem(400, "invalid_state", str(exc)) from None
        user_id = activation.user_id
        record = await self.store.activation(activation.nonce)
        if record is None or record.user_id != user_id:
            raise Problem(400, "invalid_state", "This activation is unknown: start again.")
        if record.used:
            raise activation_used()
        aggregator_user = await self.store.aggregator_user(user_id)
        if aggregator_user is None:
            raise not_linked()
        token = self.cipher.decrypt(aggregator_user.token_enc, user_id)
        connections = await aggregator_call(self.aggregator.connections(token))
        found = next((c for c in connections if c.id == connection_id), None)
        if found is None:
            raise Problem(
                404, "unknown_connection", f"The aggregator has no connection {connection_id} for this user."
            )
        await self._check_code(code, user_id, aggregator_user.id_user)
        if not await self.store.use_activation(activation.nonce, user_id, self.clock()):
            raise activation_used()  # another attempt with the same state won the race
        known = await self.store.connection(user_id, connection_id)
        if known is not None and not known.removed:
            return await self._reconnected(known, found, correlation_id)
        return await self._link(user_id, found, correlation_id, announce=known is None)

    async def _check_code(self, code: str, user_id: str, id_user: str) -> None:
        """The webview's code, exchanged at the aggregator with our client's credentials, is the
        activation's user's. The token the exchange gives is not kept (we hold the user's already)."""
        try:
            _token, owner = await self.aggregator.exchange_code(code, self.config.callback_url)
        except AggregatorError as exc:
            if exc.failure.code in ("invalidCode", "invalidRedirectUri"):
                raise Problem(400, "invalid_code", exc.failure.message) from None
            if exc.failure.code == "invalidClient":
                log.error("aggregator_client_refused", user_id=user_id)
            raise Problem(
                502, "aggregator_unavailable", exc.failure.message, retryable=exc.failure.retryable
            ) from None
        if not owner or owner != id_user:
            log.warning("callback_code_of_another_user", user_id=user_id)
            raise Problem(400, "invalid_code", "This code was not issued for this activation's user.")

    async def _bank(self, connector_id: str) -> Bank:
        if connector_id not in self._bank_names:
            for connector in await self.aggregator.connectors():
                self._bank_names[connector.id] = connector.name
        return Bank(id=connector_id, name=self._bank_names.get(connector_id, f"Banque {connector_id}"))

    async def _link(
        self, user_id: str, found: AggregatorConnection, correlation_id: str, *, announce: bool
    ) -> Connection:
        bank = await self._bank(found.connector_id)
        followed = accounts_linked(found.accounts)
        conn = linked_connection(user_id, found, bank, followed.accounts, self.clock())
        await self.store.save_connection(conn)
        if announce:
            await self.announcer.publish(
                CONNECTIONS,
                user_id,
                event_of(
                    "connection.linked",
                    ConnectionLinked(
                        user_id=user_id,
                        connection_id=conn.connection_id,
                        bank=bank,
                        state=conn.state.value if conn.state else None,
                    ),
                    correlation_id,
                    event_id=deterministic_event_id("connection.linked", user_id, conn.connection_id),
                ),
            )
            await announce_followed(self.store, self.announcer, conn, followed, correlation_id)
        log.info(
            "connection_linked",
            user_id=user_id,
            connection_id=conn.connection_id,
            accounts=len(conn.accounts),
        )
        return conn

    # --- reconnect ---------------------------------------------------------------------------
    async def reconnect(self, user_id: str, connection_id: str, correlation_id: str) -> WebviewLink:
        """The aggregator's reconnect webview for one connection (new password, strong authentication,
        renewed PSD2 consent); it comes back through the callback like an activation."""
        await self.gate.require_entitled(user_id)
        await self.owned_connection(user_id, connection_id)
        token = await user_token(self.store, self.cipher, user_id)
        link = await self._webview(user_id, token, "reconnect", connection_id=connection_id)
        log.info("reconnect_started", user_id=user_id, connection_id=connection_id)
        return link

    async def _reconnected(
        self, known: Connection, found: AggregatorConnection, correlation_id: str
    ) -> Connection:
        """Back from the reconnect webview: the connection takes the aggregator's state; when the bank
        let the user in, a sync runs at once from the kept cursors (nothing twice, nothing missed)."""
        user_id = known.user_id
        failure = found.failure
        followed = follow_bank_accounts(known.accounts, found.accounts)
        conn = known.with_failure(failure).following(followed)
        changed = conn.changed_fields(known)
        if changed:
            await self.store.update_connection(conn, changed)
        await announce_followed(self.store, self.announcer, conn, followed, correlation_id)
        await self.announcer.publish(
            CONNECTIONS,
            user_id,
            event_of(
                "connection.state_changed",
                ConnectionStateChanged(
                    user_id=user_id,
                    connection_id=known.connection_id,
                    state=conn.state.value if conn.state else "active",
                    paused=known.paused,
                    reconnected=failure is None,
                ),
                correlation_id,
            ),
        )
        log.info(
            "connection_reconnected", user_id=user_id, connection_id=known.connection_id, error=found.error
        )
        if failure is None and not known.paused:
            await self.syncs.request_sync(
                user_id, "on_demand", correlation_id, connection_id=known.connection_id, gate=False
            )
        return conn
