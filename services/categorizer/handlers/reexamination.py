"""Re-examining a user's past operations after a change of their rules.

The re-examination reads the user's past operations from the projection and, for each one that is
not manual (nor a leg of a transfer: `epargne` whatever the rules say), compares what the rules it was
last categorised with said (the payees of every version since the last re-examination are kept with
the rule set) with what today's rules say; it announces a new categorisation only where they differ,
as it finds them, then records that past operations reflect today's version. It never writes per
operation.

`run` is the background job: it re-examines users one at a time as their rules change
(`request`, from this process), and recovers what a crash or another replica left pending. Every
replica runs it; a user's re-examination holds the user's lease (`RuleSets.reexamining`), so two
replicas never re-examine one user at once: the second one leaves it and looks again shortly (the
holder may be re-examining an older version). A holder that stalls past its lease stops at its next
renewal (LeaseLost) without recording anything; its successor does the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.categorizer.domain.matching import categorize_memo, memo_text
from services.categorizer.domain.normalise import analyse
from services.categorizer.handlers.common import Announcing, Pending, Recognition
from services.categorizer.ports import Hold, Projection, RuleSets, Transfers
from shared.logging import get_logger

log = get_logger(__name__)

# announced as found, this many at a time: the importer stores them while the rest is read
ANNOUNCE_EVERY = 2000
# a user another replica is re-examining is looked at again after this long
ELSEWHERE_RETRY_S = 1.0


class ReexaminingElsewhere(Exception):
    """Another replica holds the user's re-examination now."""


@dataclass
class ReexaminationReport:
    user_id: str
    rules_version: int
    examined: int = 0
    changed: int = 0
    seconds: float = 0.0


class Reexaminer:
    def __init__(
        self,
        rulesets: RuleSets,
        projection: Projection,
        transfers: Transfers | None,
        recognition: Recognition,
        announcing: Announcing,
        clock: Callable[[], datetime],
        recovery_delay_s: float = 5.0,
    ) -> None:
        self.rulesets = rulesets
        self.projection = projection
        self.transfers = transfers
        self.recognition = recognition
        self.announcing = announcing
        self.clock = clock
        self.recovery_delay_s = recovery_delay_s
        self._pending: dict[str, int] = {}  # user -> the rules version its past operations must reflect
        self._wake = asyncio.Event()

    def request(self, user_id: str, version: int = 0) -> None:
        """Asks the background job for a re-examination of the user's past operations."""
        self._pending[user_id] = max(version, self._pending.get(user_id, 0))
        self._wake.set()

    async def reexamine(self, user_id: str) -> ReexaminationReport:
        """Announces a new categorisation for each past operation whose result changed (never manual).
        ReexaminingElsewhere when another replica is re-examining the user now."""
        async with self.rulesets.reexamining(user_id) as hold:
            if hold is None:
                raise ReexaminingElsewhere(user_id)
            return await self._reexamine(user_id, hold)

    async def _reexamine(self, user_id: str, hold: Hold) -> ReexaminationReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stored = await self.rulesets.stored(user_id)
        ruleset = stored.ruleset
        if stored.examined_version >= ruleset.version:
            # done already (by another replica, say): nothing to read; only a stale mark to lift
            if (await self.rulesets.status(user_id)).reexamination_pending:
                await self.rulesets.reexamination_done(user_id, ruleset.version)
            return ReexaminationReport(user_id, ruleset.version)
        today = self.recognition.cache.of(ruleset)
        dictionary = self.recognition.dictionary
        correlation_id = await self.rulesets.correlation_id(user_id) or f"rules:{user_id}"
        report = ReexaminationReport(user_id, ruleset.version)
        pending: list[Pending] = []
        # a leg of a transfer is `epargne` whatever the rules say (one read of the user's legs)
        legs = {} if self.transfers is None else await self.transfers.of_user(user_id)
        linked = {op_id for op_id, leg in legs.items() if leg.partner is not None}
        async for op in self.projection.of_user(user_id):
            if op.manual is not None or op.operation_id in linked:
                continue
            base_version = max(op.seen_version, stored.examined_version)
            if base_version >= ruleset.version:
                continue
            report.examined += 1
            text = analyse(memo_text(op.memo, op.label))
            now = categorize_memo(text, today, dictionary)
            base = self.recognition.at(stored, base_version)
            if base is None or categorize_memo(text, base, dictionary) != now:
                pending.append(
                    Pending(
                        user_id,
                        op.account_id,
                        op.operation_id,
                        now,
                        ruleset.version,
                        correlation_id,
                        op.month,
                        choice=op.choice,
                    )
                )
                if len(pending) >= ANNOUNCE_EVERY:
                    await self.announcing.announce(pending)
                    report.changed += len(pending)
                    pending = []
                    await hold.keep()
        await self.announcing.announce(pending)
        report.changed += len(pending)
        await hold.keep()
        await self.rulesets.reexamination_done(user_id, ruleset.version)
        report.seconds = loop.time() - started
        log.info(
            "operations_reexamined",
            user_id=user_id,
            rules_version=ruleset.version,
            examined=report.examined,
            changed=report.changed,
            seconds=round(report.seconds, 3),
        )
        return report

    async def run(self, recovery_every_s: float = 2.0) -> None:
        """Background job: re-examines users as their rules change, and recovers what was left pending."""
        next_scan = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_scan:
                    before = self.clock() - timedelta(seconds=self.recovery_delay_s)
                    for user_id in await self.rulesets.pending_since(before):
                        self.request(user_id)
                    next_scan = loop.time() + recovery_every_s
                while self._pending:
                    user_id = next(iter(self._pending))
                    wanted = self._pending.pop(user_id)
                    try:
                        report = await self.reexamine(user_id)
                        if report.rules_version < wanted:
                            # a read older than the change that asked for it: again, shortly
                            self.request(user_id, wanted)
                            await asyncio.sleep(0.05)
                    except ReexaminingElsewhere:
                        # another replica is at it: look again shortly (what it read may be older)
                        log.info("reexamination_elsewhere", user_id=user_id)
                        loop.call_later(ELSEWHERE_RETRY_S, self.request, user_id, wanted)
                    except Exception as exc:
                        log.warning("reexamination_failed", user_id=user_id, error=repr(exc))
                        # still pending in storage: the next recovery scan retries it
            except Exception as exc:
                log.warning("reexaminer_failed", error=repr(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=recovery_every_s)
