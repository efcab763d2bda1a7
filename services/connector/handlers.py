"""What each request and event does in the connector.

Every path that can start a sync (activation, on-demand, nightly, webhook) asks the gate first.
Syncs run in the consumers of banksync.sync-requests.v1 (one consumer group), so more workers
sync more users; one run at a time per user, and a request made while one runs joins it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from services.connector.domain import (
    STATE_GUIDANCE,
    AccountsFollowed,
    Failure,
    FetchWindow,
    NightlyWindow,
    SyncState,
    changed_lines,
    classify_connection_error,
    fetch_window,
    follow_bank_accounts,
    nightly_order,
)
from services.connector.gate import EntitlementsUnavailable, GateAnswer, SyncGate, rights_document
from services.connector.powens import AggregatorError, PowensClient
from services.connector.repository import ConnectorRepository, Doc, connection_key
from services.connector.security import (
    InvalidState,
    InvalidWebhook,
    StateSigner,
    TokenCipher,
    WebhookVerifier,
)
from shared.batch_publisher import BatchPublisher
from shared.contract.envelope import CloudEvent, account_key, deterministic_event_id
from shared.contract.payloads import AccountBalanceChecked, AccountDeleted, EntitlementChanged, SyncRequested
from shared.contract.topics import CONNECTIONS, SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.kafka import EventPublisher
from shared.logging import get_logger
from shared.metrics import ERRORS, NIGHT_OVERRUNS, NIGHT_UNFINISHED
from shared.problems import Problem

SERVICE = "connector"
# the nightly run prepares its requests this many users at a time (one claim insert, one publish)
NIGHTLY_CHUNK = 500
# users the nightly run asks entitlements about at once (those without a projected "yes")
NIGHTLY_REQUEST_CONCURRENCY = 16
log = get_logger(__name__)


@dataclass(frozen=True)
class ConnectorConfig:
    callback_base_url: str
    aggregator_public_url: str
    webhook_secret: str
    cursor_overlap: timedelta = timedelta(minutes=30)
    run_lease: timedelta = timedelta(minutes=10)
    nightly: NightlyWindow = field(default_factory=lambda: NightlyWindow.parse("02:00-04:00", "Europe/Paris"))
    # how far a webhook's signature date may be from our clock
    webhook_tolerance: timedelta = timedelta(minutes=5)

    @property
    def callback_url(self) -> str:
        """Where the aggregator's webview sends the browser back: a redirect URI registered for our client
        at the aggregator (exact match), and the one the code exchange names."""
        return f"{self.callback_base_url}/v1/callback"


@dataclass(frozen=True)
class AccountOutcome:
    """How one account's sync ended: the fields of its sync state and the status event that says so."""

    account_id: str
    fields: dict[str, Any]
    event: CloudEvent
    transactions: int = 0
    failure: Failure | None = None
    # the `reimport` mark this sync honoured, cleared with its state (unless a newer deletion replaced it)
    reimported: str | None = None


async def _all(steps: Sequence[Awaitable[Any]]) -> None:
    """Runs `steps` concurrently and waits for all of them (none is left running on a failure), then
    raises the first failure."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class NotEntitled(Problem):
    def __init__(self, answer: GateAnswer) -> None:
        super().__init__(
            403,
            "not_entitled",
            answer.reason or "La synchronisation automatique n'est pas incluse.",
            reason=answer.code,
        )


def activation_used() -> Problem:
    """A state already used (a replay, or the browser back twice): no data of the connection."""
    return Problem(409, "activation_used", "This activation was already used: start again.")


def entitlements_unavailable() -> Problem:
    return Problem(
        503,
        "entitlements_unavailable",
        "Impossible de vérifier vos droits pour le moment ; réessayez dans quelques instants.",
        headers={"Retry-After": "5"},
    )


SHOWN_ACCOUNT_FIELDS = ("aggregator_account_id", "name", "iban", "type", "balance", "currency", "selected")


def connection_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "connection_id": doc["connection_id"],
        "bank": doc["bank"],
        "state": "paused" if doc.get("paused") else doc.get("state"),
        "error": doc.get("error"),
        "accounts": [
            {
                **{k: a.get(k) for k in SHOWN_ACCOUNT_FIELDS},
                "coming": a.get("coming"),
                "closed": bool(a.get("closed")),
            }
            for a in doc.get("accounts", [])
        ],
    }


class ConnectorHandlers:
    def __init__(
        self,
        repository: ConnectorRepository,
        powens: PowensClient,
        gate: SyncGate,
        publisher: EventPublisher,
        cipher: TokenCipher,
        signer: StateSigner,
        config: ConnectorConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lines_publisher: EventPublisher | BatchPublisher | None = None,
    ) -> None:
        self.repository = repository
        self.powens = powens
        self.gate = gate
        self.publisher = publisher
        # bank lines go out by the thousand: a batch producer, not one faststream call per record
        self.lines_publisher = lines_publisher or publisher
        self.cipher = cipher
        self.signer = signer
        self.config = config
        self.clock = clock
        self._bank_names: dict[str, str] = {}
        self.webhooks = WebhookVerifier(config.webhook_secret, config.webhook_tolerance)

    # --- helpers -----------------------------------------------------------------------------
    async def require_entitled(self, user_id: str) -> GateAnswer:
        try:
            answer = await self.gate.check(user_id)
        except EntitlementsUnavailable:
            raise entitlements_unavailable() from None
        if not answer.allowed:
            raise NotEntitled(answer)
        return answer

    def _event(
        self, name: str, data: dict[str, Any], user_id: str, correlation_id: str, event_id: str | None = None
    ) -> CloudEvent:
        return CloudEvent.new(
            service=SERVICE,
            name=name,
            data=data,
            user_id=user_id,
            correlation_id=correlation_id,
            event_id=event_id,
            subject=data.get("aggregator_account_id") or data.get("connection_id"),
        )

    async def _token(self, user_id: str) -> str:
        doc = await self.repository.aggregator_user(user_id)
        if doc is None:
            raise Problem(
                409, "not_linked", "Aucune banque n'est reliée : activez d'abord la synchronisation."
            )
        return self.cipher.decrypt(doc["token_enc"], user_id)

    async def _bank(self, connector_id: str) -> dict[str, str]:
        if connector_id not in self._bank_names:
            for connector in await self.powens.connectors():
                self._bank_names[str(connector["id"])] = str(connector.get("name", connector["id"]))
        return {"id": connector_id, "name": self._bank_names.get(connector_id, f"Banque {connector_id}")}

    async def _owned_connection(self, user_id: str, connection_id: str) -> dict[str, Any]:
        doc = await self.repository.connection(user_id, connection_id)
        if doc is None or doc.get("removed"):
            raise Problem(404, "unknown_connection", f"No bank connection {connection_id} for this user.")
        return doc

    # --- activation --------------------------------------------------------------------------
    async def activate(self, user_id: str, correlation_id: str) -> dict[str, str]:
        await self.require_entitled(user_id)
        now = self.clock()
        existing = await self.repository.aggregator_user(user_id)
        if existing is None:
            token, id_user = await self._call(self.powens.create_user())
            existing = await self.repository.save_aggregator_user(
                user_id, self.cipher.encrypt(token, user_id), id_user, now
            )
        token = self.cipher.decrypt(existing["token_enc"], user_id)
        code = await self._call(self.powens.temporary_code(token))
        state, issued = self.signer.issue(user_id)
        await self.repository.record_activation(issued.nonce, user_id, now)
        query = urlencode(
            {
                "client_id": self.powens.client_id,
                "redirect_uri": self.config.callback_url,
                "state": state,
                "code": code,
            }
        )
        log.info("activation_started", user_id=user_id)
        return {
            "connect_url": f"{self.config.aggregator_public_url}/2.0/auth/webview/connect?{query}",
            "state": state,
        }

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except AggregatorError as exc:
            raise Problem(
                502, "aggregator_unavailable", exc.failure.message, retryable=exc.failure.retryable
            ) from None

    async def callback(
        self, connection_id: str, state: str, code: str, correlation_id: str
    ) -> dict[str, Any]:
        """Back from the webview. The signed `state` names the user; the `code` is exchanged at the
        aggregator (once, with our client's credentials) and must belong to that user's aggregator user;
        only then is the state used up. An attempt that fails (no or a wrong code, a connection the user
        does not have) leaves the state for the real redirect; a used state answers 409, never data."""
        try:
            activation = self.signer.verify(state)
        except InvalidState as exc:
            raise Problem(400, "invalid_state", str(exc)) from None
        user_id = activation.user_id
        record = await self.repository.activation(activation.nonce)
        if record is None or record.get("user_id") != user_id:
            raise Problem(400, "invalid_state", "This activation is unknown: start again.")
        if record.get("used"):
            raise activation_used()
        aggregator_user = await self.repository.aggregator_user(user_id)
        if aggregator_user is None:
            raise Problem(
                409, "not_linked", "Aucune banque n'est reliée : activez d'abord la synchronisation."
            )
        token = self.cipher.decrypt(aggregator_user["token_enc"], user_id)
        connections = await self._call(self.powens.connections(token))
        found = next((c for c in connections if str(c["id"]) == connection_id), None)
        if found is None:
            raise Problem(
                404, "unknown_connection", f"The aggregator has no connection {connection_id} for this user."
            )
        await self._check_code(code, user_id, str(aggregator_user.get("id_user", "")))
        if not await self.repository.use_activation(activation.nonce, user_id, self.clock()):
            raise activation_used()  # another attempt with the same state won the race
        known = await self.repository.connection(user_id, connection_id)
        if known is not None and not known.get("removed"):
            return connection_view(await self._reconnected(known, found, correlation_id))
        doc = await self._store_connection(user_id, found, correlation_id, announce=known is None)
        return connection_view(doc)

    async def _check_code(self, code: str, user_id: str, id_user: str) -> None:
        """The webview's code, exchanged at the aggregator with our client's credentials, is the
        activation's user's. The token the exchange gives is not kept (we hold the user's already)."""
        try:
            _token, owner = await self.powens.exchange_code(code, self.config.callback_url)
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

    # --- reconnect ---------------------------------------------------------------------------
    async def reconnect(self, user_id: str, connection_id: str, correlation_id: str) -> dict[str, str]:
        """The aggregator's reconnect webview for one connection (new password, strong authentication,
        renewed PSD2 consent); it comes back through the callback like an activation."""
        await self.require_entitled(user_id)
        await self._owned_connection(user_id, connection_id)
        token = await self._token(user_id)
        code = await self._call(self.powens.temporary_code(token))
        state, issued = self.signer.issue(user_id)
        await self.repository.record_activation(issued.nonce, user_id, self.clock())
        query = urlencode(
            {
                "client_id": self.powens.client_id,
                "redirect_uri": self.config.callback_url,
                "state": state,
                "code": code,
                "connection_id": connection_id,
            }
        )
        log.info("reconnect_started", user_id=user_id, connection_id=connection_id)
        return {
            "connect_url": f"{self.config.aggregator_public_url}/2.0/auth/webview/reconnect?{query}",
            "state": state,
        }

    async def _reconnected(
        self, known: dict[str, Any], found: dict[str, Any], correlation_id: str
    ) -> dict[str, Any]:
        """Back from the reconnect webview: the connection takes the aggregator's state; when the bank
        let the user in, a sync runs at once from the kept cursors (nothing twice, nothing missed)."""
        user_id = known["user_id"]
        error = found.get("error") or found.get("state")
        failure = classify_connection_error(str(error)) if error else None
        followed = follow_bank_accounts(known["accounts"], found.get("accounts"))
        fields: dict[str, Any] = {
            "state": failure.state.value if failure else None,
            "error": failure.as_error() if failure else None,
            "accounts": followed.accounts,
        }
        await self._set_connection_changes(known, fields)
        doc = {**known, **fields}
        await self._announce_followed(user_id, doc, followed, correlation_id)
        await self.publisher.publish(
            CONNECTIONS,
            user_id,
            self._event(
                "connection.state_changed",
                {
                    "user_id": user_id,
                    "connection_id": known["connection_id"],
                    "state": doc["state"] or "active",
                    "paused": bool(known.get("paused")),
                    "reconnected": failure is None,
                },
                user_id,
                correlation_id,
            ),
        )
        log.info("connection_reconnected", user_id=user_id, connection_id=known["connection_id"], error=error)
        if failure is None and not known.get("paused"):
            await self.request_sync(
                user_id, "on_demand", correlation_id, connection_id=known["connection_id"], gate=False
            )
        return doc

    async def _announce_followed(
        self, user_id: str, conn: dict[str, Any], followed: AccountsFollowed, correlation_id: str
    ) -> None:
        """`account.discovered` for the bank's new accounts and `account.closed` for those it closed, in
        one publish; a closed account's sync state says `closed` from now on."""
        events = [
            (
                user_id,
                self._event(
                    "account.discovered",
                    {
                        "user_id": user_id,
                        "connection_id": conn["connection_id"],
                        "bank": conn["bank"],
                        "account": account,
                    },
                    user_id,
                    correlation_id,
                    deterministic_event_id("account.discovered", user_id, account["aggregator_account_id"]),
                ),
            )
            for account in followed.discovered
        ] + [
            (
                user_id,
                self._event(
                    "account.closed",
                    {
                        "user_id": user_id,
                        "connection_id": conn["connection_id"],
                        "aggregator_account_id": account["aggregator_account_id"],
                    },
                    user_id,
                    correlation_id,
                    deterministic_event_id("account.closed", user_id, account["aggregator_account_id"]),
                ),
            )
            for account in followed.closed
        ]
        if not events:
            return
        if followed.closed:
            await self.repository.set_account_states(
                user_id,
                {
                    a["aggregator_account_id"]: {"connection_id": conn["connection_id"], "state": "closed"}
                    for a in followed.closed
                },
            )
        await self.publisher.publish_many(CONNECTIONS, events)
        log.info(
            "bank_accounts_changed",
            user_id=user_id,
            connection_id=conn["connection_id"],
            discovered=[a["aggregator_account_id"] for a in followed.discovered],
            closed=[a["aggregator_account_id"] for a in followed.closed],
        )

    async def _store_connection(
        self, user_id: str, found: dict[str, Any], correlation_id: str, *, announce: bool
    ) -> dict[str, Any]:
        connection_id = str(found["id"])
        bank = await self._bank(str(found.get("id_connector", "")))
        error = found.get("error") or found.get("state")
        failure = classify_connection_error(error) if error else None
        accounts = follow_bank_accounts([], found.get("accounts", [])).accounts
        doc = {
            "_id": connection_key(user_id, connection_id),
            "connection_id": connection_id,
            "user_id": user_id,
            "bank": bank,
            "state": failure.state.value if failure else None,
            "error": failure.as_error() if failure else None,
            "accounts": accounts,
            "removed": False,
            "paused": False,
            "linked_at": self.clock(),
        }
        await self.repository.upsert_connection(doc)
        if announce:
            await self.publisher.publish(
                CONNECTIONS,
                user_id,
                self._event(
                    "connection.linked",
                    {"user_id": user_id, "connection_id": connection_id, "bank": bank, "state": doc["state"]},
                    user_id,
                    correlation_id,
                    deterministic_event_id("connection.linked", user_id, connection_id),
                ),
            )
            await self._announce_followed(
                user_id, doc, AccountsFollowed(accounts, accounts, []), correlation_id
            )
        log.info("connection_linked", user_id=user_id, connection_id=connection_id, accounts=len(accounts))
        return doc

    # --- connections -------------------------------------------------------------------------
    async def list_connections(self, user_id: str) -> list[dict[str, Any]]:
        return [connection_view(doc) for doc in await self.repository.user_connections(user_id)]

    async def select_accounts(
        self, user_id: str, connection_id: str, selected: list[str], correlation_id: str
    ) -> dict[str, Any]:
        doc = await self._owned_connection(user_id, connection_id)
        known = {a["aggregator_account_id"] for a in doc["accounts"]}
        unknown = sorted(set(selected) - known)
        if unknown:
            raise Problem(422, "unknown_account", f"Not accounts of this connection: {', '.join(unknown)}.")
        token = await self._token(user_id)
        wanted = set(selected)
        newly_selected: list[str] = []
        for account in doc["accounts"]:
            enable = account["aggregator_account_id"] in wanted
            if account["selected"] != enable:
                await self._call(
                    self.powens.set_account_enabled(token, account["aggregator_account_id"], enable)
                )
                account["selected"] = enable
                if enable:
                    newly_selected.append(account["aggregator_account_id"])
        await self.repository.set_connection_fields(doc["_id"], {"accounts": doc["accounts"]})
        await self.publisher.publish(
            CONNECTIONS,
            user_id,
            self._event(
                "account.selection_changed",
                {"user_id": user_id, "connection_id": connection_id, "selected": sorted(wanted)},
                user_id,
                correlation_id,
            ),
        )
        if newly_selected and doc.get("state") is None and not doc.get("paused"):
            # the first sync of a newly chosen account starts at once (about a year of history)
            await self.request_sync(
                user_id,
                "activation",
                correlation_id,
                aggregator_account_ids=newly_selected,
                connection_id=connection_id,
            )
        return connection_view(doc)

    async def delete_connection(self, user_id: str, connection_id: str, correlation_id: str) -> None:
        doc = await self._owned_connection(user_id, connection_id)
        token = await self._token(user_id)
        try:
            await self.powens.delete_connection(token, connection_id)
        except AggregatorError as exc:
            if exc.failure.retryable:
                raise Problem(502, "aggregator_unavailable", exc.failure.message) from None
        await self.repository.set_connection_fields(doc["_id"], {"removed": True, "removed_at": self.clock()})
        await self.publisher.publish(
            CONNECTIONS,
            user_id,
            self._event(
                "connection.removed",
                {"user_id": user_id, "connection_id": connection_id},
                user_id,
                correlation_id,
            ),
        )

    # --- sync requests -----------------------------------------------------------------------
    async def request_sync(
        self,
        user_id: str,
        reason: str,
        correlation_id: str,
        *,
        aggregator_account_ids: list[str] | None = None,
        connection_id: str | None = None,
        gate: bool = True,
    ) -> str:
        """Publishes one `sync.requested` for the connections it claims; when every target connection
        already has a run in progress, joins that run instead. Returns the run id."""
        if gate:
            await self.require_entitled(user_id)
        now = self.clock()
        run_id = str(uuid.uuid4())
        targets = [
            c["_id"]
            for c in await self.repository.user_connections(user_id)
            if not c.get("paused") and (connection_id is None or c["connection_id"] == connection_id)
        ]
        holders = [
            await self.repository.claim_run(target, run_id, now, self.config.run_lease) for target in targets
        ]
        if holders and run_id not in holders:
            log.info("sync_joined", user_id=user_id, sync_run_id=holders[0], reason=reason)
            return holders[0]
        request = SyncRequested(
            user_id=user_id,
            sync_run_id=run_id,
            reason=reason,
            requested_at=now,
            aggregator_account_ids=aggregator_account_ids,
            connection_id=connection_id,
        )
        await self.publisher.publish(SYNC_REQUESTS, user_id, self._request_event(request, correlation_id))
        return run_id

    def _request_event(self, request: SyncRequested, correlation_id: str) -> CloudEvent:
        run_id = request.sync_run_id
        data = request.model_dump(mode="json")
        return self._event("sync.requested", data, request.user_id, correlation_id or run_id, run_id)

    async def handle_sync_request(self, request: SyncRequested, correlation_id: str) -> None:
        user_id = request.user_id
        try:
            answer = await self.gate.check(user_id)
        except EntitlementsUnavailable as exc:
            # not a bad record: the consumer waits for entitlements to answer (fail closed meanwhile)
            raise ConnectionError(f"entitlements unavailable: {exc}") from exc
        if not answer.allowed:
            log.info("sync_skipped_not_entitled", user_id=user_id, reason=request.reason, code=answer.code)
            for conn in await self.repository.user_connections(user_id):
                await self.repository.release_run(conn["_id"], request.sync_run_id)
            await self._pause(user_id, True, correlation_id)
            return
        log.info("sync_run_started", user_id=user_id, sync_run_id=request.sync_run_id, reason=request.reason)
        await self._run(request, correlation_id)

    async def _run(self, request: SyncRequested, correlation_id: str) -> None:
        user_id = request.user_id
        # what every connection of the run needs, read once, together
        connections, states, aggregator_user = await asyncio.gather(
            self.repository.user_connections(user_id),
            self.repository.account_states(user_id),
            self.repository.aggregator_user(user_id),
        )
        known = {str(s["aggregator_account_id"]): s for s in states}
        for conn in connections:
            try:
                if not self._connection_wanted(conn, request):
                    continue
                # claimed when requested: one write renews the lease (or takes an expired one)
                holder = await self.repository.renew_run(
                    conn["_id"], request.sync_run_id, self.clock(), self.config.run_lease
                )
                if holder != request.sync_run_id:
                    log.info(
                        "connection_sync_joined", connection_id=conn["connection_id"], sync_run_id=holder
                    )
                    continue
                token = self.cipher.decrypt((aggregator_user or {})["token_enc"], user_id)
                await self._sync_connection(request, conn, token, known, correlation_id)
            finally:
                # the request may have claimed this connection when it was made: always let it go
                await self.repository.release_run(conn["_id"], request.sync_run_id)

    @staticmethod
    def _connection_wanted(conn: dict[str, Any], request: SyncRequested) -> bool:
        """Every live connection of the user is read (its accounts may have changed at the bank, even
        with none selected), except: paused ones, others than the one asked for, those waiting on the
        user at night (only the reconnect webview helps them), and those without an account asked for."""
        if conn.get("paused") or (request.connection_id and conn["connection_id"] != request.connection_id):
            return False
        if request.reason == "nightly" and conn.get("state") == SyncState.ACTION_NEEDED.value:
            return False
        wanted = request.aggregator_account_ids
        return wanted is None or any(a["aggregator_account_id"] in wanted for a in conn["accounts"])

    @staticmethod
    def _accounts_to_sync(accounts: list[dict[str, Any]], request: SyncRequested) -> list[dict[str, Any]]:
        wanted = request.aggregator_account_ids
        return [
            a
            for a in accounts
            if a["selected"]
            and not a.get("closed")
            and (wanted is None or a["aggregator_account_id"] in wanted)
        ]

    async def _sync_connection(
        self,
        request: SyncRequested,
        conn: dict[str, Any],
        token: str,
        known: dict[str, Doc],
        correlation_id: str,
    ) -> None:
        """Refreshes the connection and follows its accounts (new, closed, balances), then syncs the
        selected ones concurrently (each account's own steps in order: they are keyed per account); their
        final states go in one write, their events in one batch."""
        user_id = request.user_id
        started = self.clock()
        accounts = self._accounts_to_sync(conn["accounts"], request)
        marking = asyncio.create_task(
            self.repository.update_account_states(
                user_id,
                [account["aggregator_account_id"] for account in accounts],
                {
                    "connection_id": conn["connection_id"],
                    "state": SyncState.SYNCING.value,
                    "current_run": request.sync_run_id,
                    "run_started_at": started,
                },
            )
        )
        refreshed: dict[str, Any] = {}
        failure: Failure | None = None
        try:
            if request.reason == "webhook":
                # the aggregator just synced this connection and told us: read, do not refresh again
                # (a refresh would send another CONNECTION_SYNCED, and so on, forever)
                refreshed = await self.powens.connection(token, conn["connection_id"])
            else:
                refreshed = await self.powens.sync_connection(token, conn["connection_id"])
            error = refreshed.get("error") or refreshed.get("state")
            if error:
                failure = classify_connection_error(str(error))
        except AggregatorError as exc:
            failure = exc.failure
        finally:
            # "syncing" is written while the aggregator refreshes, and always before the run's outcome
            await marking
        if failure is not None:
            await _all(
                [
                    self._set_connection_changes(
                        conn, {"state": failure.state.value, "error": failure.as_error()}
                    ),
                    self._finish(
                        user_id,
                        [
                            self._failed(
                                user_id,
                                conn,
                                a["aggregator_account_id"],
                                request,
                                failure,
                                started,
                                correlation_id,
                            )
                            for a in accounts
                        ],
                    ),
                ]
            )
            return
        followed = follow_bank_accounts(conn["accounts"], refreshed.get("accounts"))
        cleared: dict[str, Any] = {"state": None, "error": None, "accounts": followed.accounts}
        if request.reason != "webhook" and refreshed.get("last_update"):
            # the aggregator will announce this very refresh with a webhook: this run reads it already
            cleared["refreshed_update"] = refreshed["last_update"]
        accounts = self._accounts_to_sync(followed.accounts, request)
        begun = self.clock()
        windows = {
            a["aggregator_account_id"]: self._window(known.get(a["aggregator_account_id"])) for a in accounts
        }
        announced = _all(
            [
                self._set_connection_changes(conn, cleared),
                self._announce_followed(user_id, conn, followed, correlation_id),
                self.publisher.publish_many(
                    SYNC_STATUS,
                    [
                        (
                            account_key(user_id, account_id),
                            self._event(
                                "sync.started",
                                {
                                    **self._status_base(user_id, conn, account_id, request),
                                    "started_at": begun.isoformat(),
                                    "initial": window.initial,
                                },
                                user_id,
                                correlation_id,
                            ),
                        )
                        for account_id, window in windows.items()
                    ],
                ),
            ]
        )
        keep_lease = self._lease_keeper(conn["_id"], request.sync_run_id, begun)
        prelude, *results = await asyncio.gather(
            announced,
            *(
                self._sync_account(
                    user_id,
                    conn,
                    account,
                    request,
                    token,
                    windows[account["aggregator_account_id"]],
                    begun,
                    keep_lease,
                    correlation_id,
                )
                for account in accounts
            ),
            return_exceptions=True,
        )
        if isinstance(prelude, BaseException):
            # nothing moved a cursor: the whole request is tried again
            raise prelude
        # one account's unexpected failure loses neither the others' outcomes nor itself: the request is
        # tried again (fingerprints and deterministic event ids make that idempotent)
        await self._finish(user_id, [r for r in results if isinstance(r, AccountOutcome)])
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _window(self, state: Doc | None) -> FetchWindow:
        """From the cursor; from the start when the app account was deleted since (`reimport`), as a
        first sync: the bank's whole history is published again, whatever was published before."""
        if state is not None and state.get("reimport"):
            return FetchWindow(initial=True, last_update=None, reimport=str(state["reimport"]))
        return fetch_window((state or {}).get("cursor"), self.config.cursor_overlap)

    async def _set_connection_changes(self, conn: dict[str, Any], fields: dict[str, Any]) -> None:
        """Writes those of `fields` that differ from the connection as read: most runs change nothing."""
        changed = {k: v for k, v in fields.items() if conn.get(k) != v}
        if changed:
            await self.repository.set_connection_fields(conn["_id"], changed)

    def _lease_keeper(self, connection: str, run_id: str, since: datetime) -> Callable[[], Awaitable[None]]:
        """What the accounts of a connection call after each page: one extension per quarter lease."""
        extended_at = since

        async def keep() -> None:
            nonlocal extended_at
            if self.clock() - extended_at > self.config.run_lease / 4:
                # a long first sync keeps its connection; a short one does not write for it
                extended_at = self.clock()
                await self.repository.extend_run(connection, run_id, extended_at + self.config.run_lease)

        return keep

    async def _sync_account(
        self,
        user_id: str,
        conn: dict[str, Any],
        account: dict[str, Any],
        request: SyncRequested,
        token: str,
        window: FetchWindow,
        started: datetime,
        keep_lease: Callable[[], Awaitable[None]],
        correlation_id: str,
    ) -> AccountOutcome:
        """Publishes the account's new and changed lines; returns its outcome, written by `_finish`."""
        account_id = account["aggregator_account_id"]
        key = account_key(user_id, account_id)
        published = 0
        try:
            async for page in self.powens.transactions(token, account_id, window.params()):
                known = await self.repository.known_fingerprints(key, [str(t["id"]) for t in page])
                changes = changed_lines(page, {} if window.reimport else known)
                events = [
                    (
                        key,
                        self._event(
                            "transaction.observed",
                            {
                                "user_id": user_id,
                                "connection_id": conn["connection_id"],
                                "aggregator_account_id": account_id,
                                "bank": conn["bank"],
                                "sync_run_id": request.sync_run_id,
                                "initial": window.initial,
                                "currency": account.get("currency") or "EUR",
                                "transaction": dict(transaction),
                            },
                            user_id,
                            correlation_id,
                            deterministic_event_id(
                                "transaction.observed", user_id, account_id, str(transaction["id"]), fp
                            ),
                        ),
                    )
                    for transaction, fp in changes
                ]
                await self.lines_publisher.publish_many(TRANSACTIONS_RAW, events)
                await self.repository.remember_fingerprints(
                    key, {str(t["id"]): fp for t, fp in changes}, known=set(known)
                )
                published += len(events)
                await keep_lease()
            # after the lines, on their key: the importer checks the balance once it has them all
            await self.lines_publisher.publish_many(
                TRANSACTIONS_RAW,
                [
                    (
                        key,
                        self._account_synced(
                            user_id, conn, account, request, window, published, correlation_id
                        ),
                    )
                ],
            )
        except AggregatorError as exc:
            return self._failed(user_id, conn, account_id, request, exc.failure, started, correlation_id)
        finished = self.clock()
        return AccountOutcome(
            account_id,
            {
                "connection_id": conn["connection_id"],
                "cursor": started,
                "state": SyncState.OK.value,
                "last_success_at": finished,
                "last_run": {
                    "sync_run_id": request.sync_run_id,
                    "started_at": started,
                    "finished_at": finished,
                    "transactions": published,
                },
                "error": None,
            },
            self._event(
                "sync.succeeded",
                {
                    **self._status_base(user_id, conn, account_id, request),
                    "started_at": started.isoformat(),
                    "finished_at": finished.isoformat(),
                    "transactions": published,
                    "initial": window.initial,
                },
                user_id,
                correlation_id,
            ),
            transactions=published,
            reimported=window.reimport,
        )

    def _account_synced(
        self,
        user_id: str,
        conn: dict[str, Any],
        account: dict[str, Any],
        request: SyncRequested,
        window: FetchWindow,
        published: int,
        correlation_id: str,
    ) -> CloudEvent:
        """`account.synced` on the raw topic: the account's sync is complete, with the bank's balance
        (booked lines) and pending total as the refresh gave them."""
        account_id = account["aggregator_account_id"]
        return self._event(
            "account.synced",
            {
                "user_id": user_id,
                "connection_id": conn["connection_id"],
                "aggregator_account_id": account_id,
                "bank": conn["bank"],
                "sync_run_id": request.sync_run_id,
                "initial": window.initial,
                "currency": account.get("currency") or "EUR",
                "type": account.get("type") or "unknown",
                "balance": account.get("balance"),
                "coming": account.get("coming"),
                "transactions": published,
            },
            user_id,
            correlation_id,
            deterministic_event_id("account.synced", user_id, account_id, request.sync_run_id),
        )

    def _status_base(
        self, user_id: str, conn: dict[str, Any], account_id: str, request: SyncRequested
    ) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "connection_id": conn["connection_id"],
            "aggregator_account_id": account_id,
            "sync_run_id": request.sync_run_id,
            "reason": request.reason,
        }

    def _failed(
        self,
        user_id: str,
        conn: dict[str, Any],
        account_id: str,
        request: SyncRequested,
        failure: Failure,
        started: datetime,
        correlation_id: str,
    ) -> AccountOutcome:
        """A failed sync never moves the cursor: the next one asks again from the last good one."""
        ERRORS.labels(SERVICE, "sync", failure.code).inc()
        finished = self.clock()
        return AccountOutcome(
            account_id,
            {
                "connection_id": conn["connection_id"],
                "state": failure.state.value,
                "error": failure.as_error(),
                "last_run": {
                    "sync_run_id": request.sync_run_id,
                    "started_at": started,
                    "finished_at": finished,
                    "transactions": 0,
                },
            },
            self._event(
                "sync.failed",
                {
                    **self._status_base(user_id, conn, account_id, request),
                    "code": failure.code,
                    "message": failure.message,
                    "retryable": failure.retryable,
                    "finished_at": finished.isoformat(),
                },
                user_id,
                correlation_id,
            ),
            failure=failure,
        )

    async def _finish(self, user_id: str, outcomes: list[AccountOutcome]) -> None:
        """The accounts' final states in one write, then their `sync.succeeded`/`sync.failed` in one batch
        (on each account's key, after its `sync.started` when the run got that far)."""
        if not outcomes:
            return
        await self.repository.set_account_states(
            user_id,
            {o.account_id: o.fields for o in outcomes},
            clear_reimport={o.account_id: o.reimported for o in outcomes if o.reimported},
        )
        await self.publisher.publish_many(
            SYNC_STATUS, [(account_key(user_id, o.account_id), o.event) for o in outcomes]
        )
        for outcome in outcomes:
            if outcome.failure is None:
                log.info(
                    "account_synced",
                    user_id=user_id,
                    aggregator_account_id=outcome.account_id,
                    transactions=outcome.transactions,
                )
            else:
                log.warning(
                    "account_sync_failed",
                    user_id=user_id,
                    aggregator_account_id=outcome.account_id,
                    code=outcome.failure.code,
                )

    # --- what the importer says of the app accounts ------------------------------------------
    async def on_importer_events(
        self, items: Sequence[tuple[str, AccountDeleted | AccountBalanceChecked]]
    ) -> None:
        """In one write for the batch: an app account deleted marks its bank account for a whole
        re-import at its next sync (whatever triggers it); a balance check is kept for the sync status.
        Items are (event id, data), in topic order."""
        fields: dict[tuple[str, str], Doc] = {}
        for event_id, item in items:
            if not item.aggregator_account_id:
                continue  # a manual account: nothing at the bank to import again
            own = fields.setdefault((item.user_id, item.aggregator_account_id), {})
            if isinstance(item, AccountDeleted):
                own.update(reimport=event_id, account_id=None, balance=None)
                log.info(
                    "reimport_marked",
                    user_id=item.user_id,
                    aggregator_account_id=item.aggregator_account_id,
                    account_id=item.account_id,
                )
            else:
                own.update(
                    account_id=item.account_id,
                    balance={
                        "bank_balance": item.bank_balance,
                        "computed_balance": item.computed_balance,
                        "balance_gap": item.balance_gap,
                        "sync_run_id": item.sync_run_id,
                        "checked_at": self.clock(),
                    },
                )
        if fields:
            await self.repository.set_states_of_many(fields)

    # --- entitlements ------------------------------------------------------------------------
    async def on_entitlement_changed(self, change: EntitlementChanged, correlation_id: str) -> None:
        await self.repository.project_rights(change.user_id, rights_document(change.model_dump()))
        # act on the newest rights held, whichever path (this event, an HTTP check) brought them
        current = await self.repository.projected_rights(change.user_id)
        if current is not None:
            await self._pause(change.user_id, not current["allowed"], correlation_id)

    async def _pause(self, user_id: str, paused: bool, correlation_id: str) -> None:
        """Paused connections fetch nothing; what was imported stays. Resuming needs no new bank setup."""
        changed = await self.repository.set_paused(user_id, paused)
        for connection_id in changed:
            log.info(
                "connection_paused" if paused else "connection_resumed",
                user_id=user_id,
                connection_id=connection_id,
            )
            await self.publisher.publish(
                CONNECTIONS,
                user_id,
                self._event(
                    "connection.state_changed",
                    {
                        "user_id": user_id,
                        "connection_id": connection_id,
                        "state": "paused" if paused else "active",
                        "paused": paused,
                    },
                    user_id,
                    correlation_id,
                ),
            )

    # --- nightly and webhooks ----------------------------------------------------------------
    async def nightly_run(
        self,
        correlation_id: str,
        *,
        night: str | None = None,
        spread_over: timedelta | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> dict[str, int]:
        """One `sync.requested` per entitled user with live connections; the others are skipped, with why.

        Connections waiting on the user (`action_needed`) are not retried: only the reconnect webview
        helps them. With `spread_over`, each user is requested at their own stable moment in it
        (`nightly_order`), so the aggregator sees a steady flow; without, everyone now (ops' run).
        In sets of at most NIGHTLY_CHUNK users: every live connection and every projected right is read
        once for the whole night, the runs of a set are claimed in one insert (tagged with `night`, for
        the window's end), its requests published in one batch. Only users without a projected "yes"
        are asked over HTTP (see SyncGate.check).
        """
        connections: dict[str, list[Doc]] = {}
        for conn in await self.repository.live_connections():
            connections.setdefault(str(conn["user_id"]), []).append(conn)
        waiting = {
            user
            for user, conns in connections.items()
            if all(c.get("paused") or c.get("state") == SyncState.ACTION_NEEDED.value for c in conns)
            and any(c.get("state") == SyncState.ACTION_NEEDED.value for c in conns)
        }
        users = sorted(set(connections) - waiting)
        order = nightly_order(users, spread_over) if spread_over else [(timedelta(0), u) for u in users]
        projected = await self.repository.all_projected_rights()
        began = self.clock()
        requested = 0
        position = 0
        while position < len(order):
            if spread_over:
                await sleep(max(0.0, (began + order[position][0] - self.clock()).total_seconds()))
            elapsed = self.clock() - began
            chunk = [user for offset, user in order[position : position + NIGHTLY_CHUNK] if offset <= elapsed]
            chunk = chunk or [order[position][1]]
            position += len(chunk)
            allowed = await self._nightly_allowed(chunk, projected, correlation_id)
            requested += await self._request_nightly(
                {user: connections[user] for user in chunk if user in allowed}, correlation_id, night
            )
        skipped = len(users) - requested
        log.info(
            "nightly_run", users=len(connections), requested=requested, skipped=skipped, waiting=len(waiting)
        )
        return {
            "users": len(connections),
            "requested": requested,
            "skipped": skipped + len(waiting),
            "waiting_on_user": len(waiting),
        }

    async def check_night(self, night: str, window_end: datetime, correlation_id: str) -> dict[str, Any]:
        """At the window's end: a night whose syncs are still queued or running is reported (metric,
        warning, `nightly.overran` on banksync.sync-status.v1) instead of silently running on."""
        unfinished = await self.repository.unfinished_night(night)
        NIGHT_UNFINISHED.set(unfinished)
        report: dict[str, Any] = {
            "night": night,
            "window_end": window_end.isoformat(),
            "unfinished_connections": unfinished,
            "overran": unfinished > 0,
        }
        if unfinished:
            NIGHT_OVERRUNS.inc()
            log.warning("nightly_overran", **report)
            await self.publisher.publish(
                SYNC_STATUS,
                "nightly",
                CloudEvent.new(
                    service=SERVICE,
                    name="nightly.overran",
                    data=report,
                    user_id="",  # about the night, no user's
                    correlation_id=correlation_id,
                    subject=night,
                    event_id=deterministic_event_id("nightly.overran", night),
                ),
            )
        else:
            log.info("nightly_finished_in_window", night=night)
        return report

    async def _nightly_allowed(
        self, users: Sequence[str], projected: dict[str, Doc], correlation_id: str
    ) -> set[str]:
        """The users of a set whose projected rights say yes, and those the gate then allows."""
        allowed = {user for user in users if (projected.get(user) or {}).get("allowed")}
        slots = asyncio.Semaphore(NIGHTLY_REQUEST_CONCURRENCY)

        async def ask(user_id: str) -> bool:
            async with slots:
                try:
                    answer = await self.gate.check(user_id)
                except EntitlementsUnavailable:
                    log.warning("nightly_skip_entitlements_unavailable", user_id=user_id)
                    return False
                if not answer.allowed:
                    log.info("nightly_skip_not_entitled", user_id=user_id, code=answer.code)
                    await self._pause(user_id, True, correlation_id)
                return answer.allowed

        unsure = [user for user in users if user not in allowed]
        for user_id, yes in zip(unsure, await asyncio.gather(*(ask(u) for u in unsure)), strict=True):
            if yes:
                allowed.add(user_id)
        return allowed

    async def _request_nightly(
        self, connections: dict[str, list[Doc]], correlation_id: str, night: str | None = None
    ) -> int:
        """Claims a run per user on their unpaused connections, in one insert, and publishes the requests
        of the users who hold one (a user whose every connection is already syncing joins that run)."""
        now = self.clock()
        run_ids = {user: str(uuid.uuid4()) for user in connections}
        wanted = {
            conn["_id"]: run_ids[user]
            for user, conns in connections.items()
            for conn in conns
            if not conn.get("paused") and conn.get("state") != SyncState.ACTION_NEEDED.value
        }
        holders = await self.repository.claim_runs(wanted, now, self.config.run_lease, night=night)
        requests: list[tuple[str, CloudEvent]] = []
        for user, conns in connections.items():
            held = [holders[c["_id"]] for c in conns if c["_id"] in wanted]
            run_id = run_ids[user]
            if held and run_id not in held:
                log.info("sync_joined", user_id=user, sync_run_id=held[0], reason="nightly")
                continue
            request = SyncRequested(user_id=user, sync_run_id=run_id, reason="nightly", requested_at=now)
            requests.append((user, self._request_event(request, correlation_id)))
        await self.publisher.publish_many(SYNC_REQUESTS, requests)
        return len(requests)

    async def check_webhook(
        self, method: str, path: str, signature: str | None, date: str | None, body: bytes
    ) -> None:
        """A webhook signed by the aggregator (WebhookVerifier), whose signature was never accepted
        before (by any replica); 401 otherwise."""
        now = self.clock()
        try:
            digest = self.webhooks.verify(method, path, signature, date, body, now=now)
        except InvalidWebhook as exc:
            raise Problem(401, exc.code, str(exc)) from None
        # kept as long as a replay could still pass the date check (twice the tolerance), and a minute
        keep = 2 * self.config.webhook_tolerance + timedelta(minutes=1)
        if not await self.repository.remember_webhook_signature(digest, now, keep):
            log.warning("webhook_replayed")
            raise Problem(401, "webhook_replayed", "This webhook signature was already accepted.")

    async def on_webhook(self, body: dict[str, Any], correlation_id: str) -> dict[str, str]:
        connection = body.get("connection") if isinstance(body.get("connection"), dict) else None
        if connection is None or "id" not in connection:
            raise Problem(422, "validation_error", "A CONNECTION_SYNCED webhook carries `connection.id`.")
        owner = body.get("user")
        aggregator_user: dict[str, Any] = owner if isinstance(owner, dict) else {}
        doc = await self.repository.connection_for_webhook(
            str(aggregator_user.get("id", "")), str(connection["id"])
        )
        if doc is None or doc.get("removed"):
            log.info("webhook_unknown_connection", connection_id=str(connection["id"]))
            return {"status": "ignored"}
        if connection.get("last_update") and connection.get("last_update") == doc.get("refreshed_update"):
            # the announcement of our own refresh, whose run read (or is reading) the result
            return {"status": "already_read"}
        user_id = doc["user_id"]
        try:
            answer = await self.gate.check(user_id)
        except EntitlementsUnavailable:
            raise entitlements_unavailable() from None  # non-200: the aggregator sends it again
        if not answer.allowed:
            log.info("webhook_skip_not_entitled", user_id=user_id, code=answer.code)
            return {"status": "skipped"}
        run_id = await self.request_sync(
            user_id, "webhook", correlation_id, connection_id=doc["connection_id"], gate=False
        )
        return {"status": "accepted", "sync_run_id": run_id}

    # --- status ------------------------------------------------------------------------------
    async def sync_status(self, user_id: str) -> list[dict[str, Any]]:
        """Each selected account's state, as it truly is: `syncing` while a run is queued or running,
        `never_synced` before its first success, `closed` once the bank closed it; each with the action
        the user can take and the last balance check (`balance_gap` not zero: something is missing)."""
        connections, states = await asyncio.gather(
            self.repository.user_connections(user_id), self.repository.account_states(user_id)
        )
        by_account = {s["aggregator_account_id"]: s for s in states}
        actives = await asyncio.gather(
            *(self.repository.active_run(conn["_id"], self.clock()) for conn in connections)
        )
        out = []
        for conn, active in zip(connections, actives, strict=True):
            for account in conn["accounts"]:
                if not account["selected"]:
                    continue
                state = by_account.get(account["aggregator_account_id"], {})
                current = _current_state(conn, account, state, active is not None)
                stored_error = state.get("error") or conn.get("error")
                error = stored_error if current in (SyncState.ERROR, SyncState.ACTION_NEEDED) else None
                action, message = STATE_GUIDANCE[current]
                if error is not None:
                    message = error.get("message") or message
                last_run = state.get("last_run")
                balance = state.get("balance") or {}
                out.append(
                    {
                        "aggregator_account_id": account["aggregator_account_id"],
                        "account_id": state.get("account_id"),
                        "connection_id": conn["connection_id"],
                        "state": current.value,
                        "action": (error or {}).get("action") or action.value,
                        "message": message,
                        "last_success_at": _iso(state.get("last_success_at")),
                        "last_run": {
                            "sync_run_id": last_run["sync_run_id"],
                            "started_at": _iso(last_run["started_at"]),
                            "finished_at": _iso(last_run.get("finished_at")),
                            "transactions": last_run.get("transactions", 0),
                        }
                        if last_run
                        else None,
                        "error": {"code": error["code"], "message": error["message"]} if error else None,
                        "reimport_pending": bool(state.get("reimport")),
                        "bank_balance": balance.get("bank_balance"),
                        "computed_balance": balance.get("computed_balance"),
                        "balance_gap": balance.get("balance_gap"),
                    }
                )
        return out


def _current_state(conn: Doc, account: Doc, state: Doc, active: bool) -> SyncState:
    if conn.get("paused"):
        return SyncState.PAUSED
    if account.get("closed") or state.get("state") == SyncState.CLOSED.value:
        return SyncState.CLOSED
    if active:
        return SyncState.SYNCING  # queued or running
    stored = state.get("state")
    if stored == SyncState.SYNCING.value:
        # the run that said so is gone without an outcome (its process died); it is asked again
        stored = SyncState.ERROR.value if state.get("error") else None
    if stored in (SyncState.ERROR.value, SyncState.ACTION_NEEDED.value):
        return SyncState(stored)
    if conn.get("state") == SyncState.ACTION_NEEDED.value:
        return SyncState.ACTION_NEEDED
    if state.get("last_success_at") is None:
        return SyncState.NEVER_SYNCED
    return SyncState.OK


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)
