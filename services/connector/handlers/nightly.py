"""The nightly run: one `sync.requested` per entitled user with live connections, spread over the
window; at the window's end, a night still running is reported."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from services.connector.domain.nightly import (
    LiveConnection,
    NightlyReport,
    connections_by_user,
    nightly_order,
    waiting_on_user,
)
from services.connector.domain.rights import EntitlementsUnavailable
from services.connector.domain.sync_run import SyncRun
from services.connector.handlers.common import ConnectorConfig, event_of, log
from services.connector.handlers.gate import SyncGate
from services.connector.handlers.pauses import Pauses
from services.connector.handlers.syncs import request_event
from services.connector.ports import Announcer, ConnectorStore
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import NightlyOverran
from shared.contract.topics import SYNC_REQUESTS, SYNC_STATUS
from shared.metrics import NIGHT_OVERRUNS, NIGHT_UNFINISHED

# the nightly run prepares its requests this many users at a time (one claim insert, one publish)
NIGHTLY_CHUNK = 500
# users the nightly run asks entitlements about at once (those without a projected "yes")
NIGHTLY_REQUEST_CONCURRENCY = 16


class Nightly:
    def __init__(
        self,
        store: ConnectorStore,
        gate: SyncGate,
        announcer: Announcer,
        pauses: Pauses,
        config: ConnectorConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.gate = gate
        self.announcer = announcer
        self.pauses = pauses
        self.config = config
        self.clock = clock

    async def nightly_run(
        self,
        correlation_id: str,
        *,
        night: str | None = None,
        spread_over: timedelta | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> NightlyReport:
        """One `sync.requested` per entitled user with live connections; the others are skipped, with why.

        Connections waiting on the user (`action_needed`) are not retried: only the reconnect webview
        helps them. With `spread_over`, each user is requested at their own stable moment in it
        (`nightly_order`), so the aggregator sees a steady flow; without, everyone now (ops' run).
        In sets of at most NIGHTLY_CHUNK users: every live connection and every projected right is read
        once for the whole night, the runs of a set are claimed in one insert (tagged with `night`, for
        the window's end), its requests published in one batch. Only users without a projected "yes"
        are asked over HTTP (see SyncGate.check).
        """
        connections = connections_by_user(await self.store.live_connections())
        waiting = waiting_on_user(connections)
        users = sorted(set(connections) - waiting)
        order = nightly_order(users, spread_over) if spread_over else [(timedelta(0), u) for u in users]
        projected = await self.store.all_projected_rights()
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
            allowed = await self._allowed(chunk, projected, correlation_id)
            requested += await self._request(
                {user: connections[user] for user in chunk if user in allowed}, correlation_id, night
            )
        skipped = len(users) - requested
        log.info(
            "nightly_run", users=len(connections), requested=requested, skipped=skipped, waiting=len(waiting)
        )
        return NightlyReport(len(connections), requested, skipped + len(waiting), len(waiting))

    async def check_night(self, night: str, window_end: datetime, correlation_id: str) -> NightlyOverran:
        """At the window's end: a night whose syncs are still queued or running is reported (metric,
        warning, `nightly.overran` on banksync.sync-status.v1) instead of silently running on."""
        unfinished = await self.store.unfinished_night(night)
        NIGHT_UNFINISHED.set(unfinished)
        report = NightlyOverran(
            night=night, window_end=window_end, unfinished_connections=unfinished, overran=unfinished > 0
        )
        if unfinished:
            NIGHT_OVERRUNS.inc()
            log.warning("nightly_overran", **report.model_dump(mode="json"))
            await self.announcer.publish(
                SYNC_STATUS,
                "nightly",
                event_of(
                    "nightly.overran",
                    report,
                    correlation_id,
                    user_id="",  # about the night, no user's
                    subject=night,
                    event_id=deterministic_event_id("nightly.overran", night),
                ),
            )
        else:
            log.info("nightly_finished_in_window", night=night)
        return report

    async def _allowed(
        self, users: Sequence[str], projected: dict[str, bool], correlation_id: str
    ) -> set[str]:
        """The users of a set whose projected rights say yes, and those the gate then allows."""
        allowed = {user for user in users if projected.get(user)}
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
                    await self.pauses.pause(user_id, True, correlation_id)
                return answer.allowed

        unsure = [user for user in users if user not in allowed]
        for user_id, yes in zip(unsure, await asyncio.gather(*(ask(u) for u in unsure)), strict=True):
            if yes:
                allowed.add(user_id)
        return allowed

    async def _request(
        self, connections: dict[str, list[LiveConnection]], correlation_id: str, night: str | None = None
    ) -> int:
        """Claims a run per user on their unpaused connections, in one insert, and publishes the requests
        of the users who hold one (a user whose every connection is already syncing joins that run)."""
        now = self.clock()
        runs = {user: SyncRun(user, str(uuid.uuid4()), "nightly", correlation_id) for user in connections}
        wanted = {
            conn.key: runs[user].run_id
            for user, conns in connections.items()
            for conn in conns
            if conn.to_sync
        }
        holders = await self.store.claim_runs(wanted, now, self.config.run_lease, night=night)
        requests: list[tuple[str, CloudEvent]] = []
        for user, conns in connections.items():
            held = [holders[c.key] for c in conns if c.key in wanted]
            run = runs[user]
            if held and run.run_id not in held:
                log.info("sync_joined", user_id=user, sync_run_id=held[0], reason="nightly")
                continue
            requests.append((user, request_event(run, now)))
        await self.announcer.publish_many(SYNC_REQUESTS, requests)
        return len(requests)
