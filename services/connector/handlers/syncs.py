"""Sync requests and sync runs.

Every path that can start a sync (activation, on-demand, nightly, webhook) asks the gate first.
Syncs run in the consumers of banksync.sync-requests.v1 (one consumer group), so more workers
sync more users; one run at a time per connection, and a request made while one runs joins it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from services.connector.domain.accounts import follow_bank_accounts
from services.connector.domain.connections import AggregatorConnection, Connection
from services.connector.domain.failures import AggregatorError, Failure
from services.connector.domain.lines import changed_lines, line_id
from services.connector.domain.rights import EntitlementsUnavailable
from services.connector.domain.secrets import TokenCipher
from services.connector.domain.states import AccountSyncState
from services.connector.domain.sync_run import AccountOutcome, AccountSync, SyncRun, window_of
from services.connector.handlers.common import SERVICE, ConnectorConfig, announce_followed, event_of, log
from services.connector.handlers.gate import SyncGate
from services.connector.handlers.pauses import Pauses
from services.connector.ports import Aggregator, Announcer, ConnectorStore
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import SyncRequested
from shared.contract.topics import SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.metrics import ERRORS


async def _all(steps: Sequence[Awaitable[Any]]) -> None:
    """Runs `steps` concurrently and waits for all of them (none is left running on a failure), then
    raises the first failure."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class RunLeaseLost(Exception):
    """Another run took the connection over while this one was reading (it had stalled past its lease)."""


def request_event(run: SyncRun, at: datetime) -> CloudEvent:
    """The `sync.requested` of a run: its id is the run's (a request published twice is one)."""
    return event_of(
        "sync.requested", run.requested(at), run.correlation_id or run.run_id, event_id=run.run_id
    )


class Syncs:
    def __init__(
        self,
        store: ConnectorStore,
        aggregator: Aggregator,
        gate: SyncGate,
        announcer: Announcer,
        cipher: TokenCipher,
        pauses: Pauses,
        config: ConnectorConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.gate = gate
        self.announcer = announcer
        self.cipher = cipher
        self.pauses = pauses
        self.config = config
        self.clock = clock

    # --- requests ------------------------------------------------------------------------------
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
            await self.gate.require_entitled(user_id)
        now = self.clock()
        run = SyncRun(
            user_id,
            str(uuid.uuid4()),
            reason,
            correlation_id,
            tuple(aggregator_account_ids) if aggregator_account_ids is not None else None,
            connection_id,
        )
        targets = [
            c.key
            for c in await self.store.user_connections(user_id)
            if not c.paused and (connection_id is None or c.connection_id == connection_id)
        ]
        holders = [
            await self.store.claim_run(target, run.run_id, now, self.config.run_lease) for target in targets
        ]
        if holders and run.run_id not in holders:
            log.info("sync_joined", user_id=user_id, sync_run_id=holders[0], reason=reason)
            return holders[0]
        await self.announcer.publish(SYNC_REQUESTS, user_id, request_event(run, now))
        return run.run_id

    # --- runs ----------------------------------------------------------------------------------
    async def handle_sync_request(self, request: SyncRequested, correlation_id: str) -> None:
        run = SyncRun.of(request, correlation_id)
        try:
            answer = await self.gate.check(run.user_id)
        except EntitlementsUnavailable as exc:
            # not a bad record: the consumer waits for entitlements to answer (fail closed meanwhile)
            raise ConnectionError(f"entitlements unavailable: {exc}") from exc
        if not answer.allowed:
            log.info("sync_skipped_not_entitled", user_id=run.user_id, reason=run.reason, code=answer.code)
            for conn in await self.store.user_connections(run.user_id):
                await self.store.release_run(conn.key, run.run_id, self.clock())
            await self.pauses.pause(run.user_id, True, correlation_id)
            return
        log.info("sync_run_started", user_id=run.user_id, sync_run_id=run.run_id, reason=run.reason)
        await self._run(run)

    async def _run(self, run: SyncRun) -> None:
        # what every connection of the run needs, read once, together
        connections, states, aggregator_user = await asyncio.gather(
            self.store.user_connections(run.user_id),
            self.store.account_states(run.user_id),
            self.store.aggregator_user(run.user_id),
        )
        known = {s.aggregator_account_id: s for s in states}
        for conn in connections:
            try:
                if not run.wants(conn):
                    continue
                # claimed when requested: one write renews the lease (or takes an expired one)
                holder = await self.store.renew_run(conn.key, run.run_id, self.clock(), self.config.run_lease)
                if holder != run.run_id:
                    log.info("connection_sync_joined", connection_id=conn.connection_id, sync_run_id=holder)
                    continue
                if aggregator_user is None:
                    raise KeyError("token_enc")  # connections without the aggregator user behind them
                token = self.cipher.decrypt(aggregator_user.token_enc, run.user_id)
                await self._sync_connection(run, conn, token, known)
            finally:
                # the request may have claimed this connection when it was made: always let it go
                await self.store.release_run(conn.key, run.run_id, self.clock())
        # accounts selected after this run read its connections: their activation joined this run (one run
        # per connection), which did not sync them; they get a run of their own now that it has ended
        later = await self.store.user_connections(run.user_id)
        for connection_id, account_ids in run.selected_meanwhile(connections, later).items():
            log.info("sync_follow_up", user_id=run.user_id, connection_id=connection_id, accounts=account_ids)
            await self.request_sync(
                run.user_id,
                "activation",
                run.correlation_id,
                aggregator_account_ids=account_ids,
                connection_id=connection_id,
                gate=False,
            )

    async def _refresh(self, run: SyncRun, conn: Connection, token: str) -> AggregatorConnection:
        if run.reads_only:
            # the aggregator just synced this connection and told us: read, do not refresh again
            return await self.aggregator.connection(token, conn.connection_id)
        return await self.aggregator.sync_connection(token, conn.connection_id)

    async def _sync_connection(
        self, run: SyncRun, conn: Connection, token: str, known: dict[str, AccountSyncState]
    ) -> None:
        """Refreshes the connection and follows its accounts (new, closed, balances), then syncs the
        selected ones concurrently (each account's own steps in order: they are keyed per account); their
        final states go in one write, their events in one batch."""
        started = self.clock()
        accounts = run.accounts_to_sync(conn.accounts)
        marking = asyncio.create_task(
            self.store.mark_syncing(
                run.user_id,
                conn.connection_id,
                [account.aggregator_account_id for account in accounts],
                run.run_id,
                started,
            )
        )
        refreshed: AggregatorConnection | None = None
        failure: Failure | None = None
        try:
            refreshed = await self._refresh(run, conn, token)
            failure = refreshed.failure
        except AggregatorError as exc:
            failure = exc.failure
        finally:
            # "syncing" is written while the aggregator refreshes, and always before the run's outcome
            await marking
        keep_lease = self._lease_keeper(conn.key, run.run_id, started)
        if failure is not None or refreshed is None:
            assert failure is not None
            if not await self._still_holds(run, conn, keep_lease):
                return
            await _all(
                [
                    self._save_connection(conn, conn.with_failure(failure)),
                    self._finish(
                        run,
                        [
                            self._failed(run, conn.connection_id, a.aggregator_account_id, failure, started)
                            for a in accounts
                        ],
                    ),
                ]
            )
            return
        followed = follow_bank_accounts(conn.accounts, refreshed.accounts)
        after = conn.with_failure(None).following(followed)
        if not run.reads_only and refreshed.last_update:
            # the aggregator will announce this very refresh with a webhook: this run reads it already
            after = dataclasses.replace(after, refreshed_update=refreshed.last_update)
        begun = self.clock()
        parts = [
            AccountSync(
                run,
                conn.connection_id,
                conn.bank,
                account,
                window_of(known.get(account.aggregator_account_id), self.config.cursor_overlap),
                begun,
            )
            for account in run.accounts_to_sync(followed.accounts)
        ]
        announced = _all(
            [
                self._save_connection(conn, after),
                announce_followed(self.store, self.announcer, conn, followed, run.correlation_id),
                self.announcer.publish_many(
                    SYNC_STATUS,
                    [
                        (part.key, event_of("sync.started", part.started(), run.correlation_id))
                        for part in parts
                    ],
                ),
            ]
        )
        prelude, *results = await asyncio.gather(
            announced,
            *(self._sync_account(part, token, keep_lease) for part in parts),
            return_exceptions=True,
        )
        if isinstance(prelude, BaseException):
            # nothing moved a cursor: the whole request is tried again
            raise prelude
        lost = any(isinstance(result, RunLeaseLost) for result in results)
        if lost or not await self._still_holds(run, conn, keep_lease):
            if lost:
                self._lease_lost(run, conn)
            return
        # one account's unexpected failure loses neither the others' outcomes nor itself: the request is
        # tried again (fingerprints and deterministic event ids make that idempotent)
        await self._finish(run, [r for r in results if isinstance(r, AccountOutcome)])
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _still_holds(
        self, run: SyncRun, conn: Connection, keep_lease: Callable[[], Awaitable[None]]
    ) -> bool:
        """Before the outcomes are written: False when another run took the connection over (this one
        stalled past its lease; the renewal is only asked once a quarter lease has gone by)."""
        try:
            await keep_lease()
        except RunLeaseLost:
            self._lease_lost(run, conn)
            return False
        return True

    def _lease_lost(self, run: SyncRun, conn: Connection) -> None:
        # another run holds the connection now: it syncs these accounts and writes their outcomes; this
        # run writes nothing more
        log.warning(
            "sync_lease_lost", user_id=run.user_id, connection_id=conn.connection_id, sync_run_id=run.run_id
        )

    async def _save_connection(self, before: Connection, after: Connection) -> None:
        """Writes what differs from the connection as read: most runs change nothing."""
        changed = after.changed_fields(before)
        if changed:
            await self.store.update_connection(after, changed)

    def _lease_keeper(self, connection: str, run_id: str, since: datetime) -> Callable[[], Awaitable[None]]:
        """What the accounts of a connection call after each page: one renewal per quarter lease, which
        raises RunLeaseLost when another run has taken the connection over (this one stalled past its
        lease: it must stop publishing)."""
        extended_at = since

        async def keep() -> None:
            nonlocal extended_at
            if self.clock() - extended_at > self.config.run_lease / 4:
                # a long first sync keeps its connection; a short one does not write for it
                extended_at = self.clock()
                holder = await self.store.renew_run(connection, run_id, extended_at, self.config.run_lease)
                if holder != run_id:
                    raise RunLeaseLost(connection, holder)

        return keep

    async def _sync_account(
        self, part: AccountSync, token: str, keep_lease: Callable[[], Awaitable[None]]
    ) -> AccountOutcome:
        """Publishes the account's new and changed lines; returns its outcome, written by `_finish`."""
        published = 0
        correlation_id = part.run.correlation_id
        try:
            async for page in self.aggregator.transactions(token, part.account_id, part.window):
                known = await self.store.known_fingerprints(part.key, [line_id(t) for t in page])
                changes = changed_lines(page, {} if part.window.reimport else known)
                events = [
                    (
                        part.key,
                        event_of(
                            "transaction.observed",
                            part.observed(line),
                            correlation_id,
                            event_id=part.observed_id(line, print_),
                            validated=False,
                        ),
                    )
                    for line, print_ in changes
                ]
                await self.announcer.publish_many(TRANSACTIONS_RAW, events)
                await self.store.remember_fingerprints(
                    part.key, {line_id(t): print_ for t, print_ in changes}, known=set(known)
                )
                published += len(events)
                await keep_lease()
            # after the lines, on their key: the importer checks the balance once it has them all
            synced = event_of(
                "account.synced", part.synced(published), correlation_id, event_id=part.synced_id()
            )
            await self.announcer.publish_many(TRANSACTIONS_RAW, [(part.key, synced)])
        except AggregatorError as exc:
            ERRORS.labels(SERVICE, "sync", exc.failure.code).inc()
            return part.failed(exc.failure, self.clock())
        return part.succeeded(self.clock(), published)

    def _failed(
        self, run: SyncRun, connection_id: str, account_id: str, failure: Failure, started: datetime
    ) -> AccountOutcome:
        ERRORS.labels(SERVICE, "sync", failure.code).inc()
        return run.failed(connection_id, account_id, failure, started, self.clock())

    async def _finish(self, run: SyncRun, outcomes: list[AccountOutcome]) -> None:
        """The accounts' final states in one write, then their `sync.succeeded`/`sync.failed` in one batch
        (on each account's key, after its `sync.started` when the run got that far)."""
        if not outcomes:
            return
        await self.store.record_outcomes(run.user_id, outcomes)
        await self.announcer.publish_many(
            SYNC_STATUS,
            [
                (
                    account_key(run.user_id, o.aggregator_account_id),
                    event_of("sync.failed" if o.failure else "sync.succeeded", o.status, run.correlation_id),
                )
                for o in outcomes
            ],
        )
        for outcome in outcomes:
            if outcome.failure is None:
                log.info(
                    "account_synced",
                    user_id=run.user_id,
                    aggregator_account_id=outcome.aggregator_account_id,
                    transactions=outcome.transactions,
                )
            else:
                log.warning(
                    "account_sync_failed",
                    user_id=run.user_id,
                    aggregator_account_id=outcome.aggregator_account_id,
                    code=outcome.failure.code,
                )
