"""The aggregator's webhooks: a signature that holds and was never accepted before (by any replica),
then a CONNECTION_SYNCED that starts a run reading what the aggregator refreshed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from services.connector.domain.rights import EntitlementsUnavailable
from services.connector.domain.secrets import InvalidWebhook, WebhookVerifier
from services.connector.domain.webhooks import ConnectionSynced, WebhookAnswer
from services.connector.handlers.common import ConnectorConfig, entitlements_unavailable, log
from services.connector.handlers.gate import SyncGate
from services.connector.handlers.syncs import Syncs
from services.connector.ports import ConnectorStore
from shared.problems import Problem


class Webhooks:
    def __init__(
        self,
        store: ConnectorStore,
        gate: SyncGate,
        syncs: Syncs,
        config: ConnectorConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.gate = gate
        self.syncs = syncs
        self.config = config
        self.clock = clock
        self.verifier = WebhookVerifier(config.webhook_secret, config.webhook_tolerance)

    async def check_webhook(
        self, method: str, path: str, signature: str | None, date: str | None, body: bytes
    ) -> None:
        """A webhook signed by the aggregator (WebhookVerifier), whose signature was never accepted
        before (by any replica); 401 otherwise."""
        now = self.clock()
        try:
            digest = self.verifier.verify(method, path, signature, date, body, now=now)
        except InvalidWebhook as exc:
            raise Problem(401, exc.code, str(exc)) from None
        # kept as long as a replay could still pass the date check (twice the tolerance), and a minute
        keep = 2 * self.config.webhook_tolerance + timedelta(minutes=1)
        if not await self.store.remember_webhook_signature(digest, now, keep):
            log.warning("webhook_replayed")
            raise Problem(401, "webhook_replayed", "This webhook signature was already accepted.")

    async def on_webhook(self, notice: ConnectionSynced, correlation_id: str) -> WebhookAnswer:
        conn = await self.store.connection_for_webhook(notice.aggregator_user_id, notice.connection_id)
        if conn is None or conn.removed:
            log.info("webhook_unknown_connection", connection_id=notice.connection_id)
            return WebhookAnswer("ignored")
        if notice.last_update and notice.last_update == conn.refreshed_update:
            # the announcement of our own refresh, whose run read (or is reading) the result
            return WebhookAnswer("already_read")
        user_id = conn.user_id
        try:
            answer = await self.gate.check(user_id)
        except EntitlementsUnavailable:
            raise entitlements_unavailable() from None  # non-200: the aggregator sends it again
        if not answer.allowed:
            log.info("webhook_skip_not_entitled", user_id=user_id, code=answer.code)
            return WebhookAnswer("skipped")
        run_id = await self.syncs.request_sync(
            user_id, "webhook", correlation_id, connection_id=conn.connection_id, gate=False
        )
        return WebhookAnswer("accepted", run_id)
