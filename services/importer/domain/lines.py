"""Dedup, account mapping and reconciliation of one aggregator account's bank lines: pure rules, no I/O.

Everything known about one aggregator account is an `AccountLines`: one `Line` per aggregator
transaction id (its identity), with the latest version seen and what it stands for in the app:

- it *holds* an operation (`op_id`): the app shows one operation for it;
- it *reconciles* a manual operation (`reconciles`): the user's own entry stands for it ("pointée");
- it is *claimed* by a booked line (`claimed_by`): a pending line whose booking came with a new id;
  the booked line took its operation over (`claims`), so the pair is one operation, never two;
- or it holds nothing (deleted, or explained by another line).

`observe` applies one observation of a line. Versions only move forward (an older or repeated
observation changes nothing), so redelivery, a consumer group reset and a replay are no-ops. Every
decision depends only on the state and the observation, so re-running a batch whose effects were
only partly stored gives the same decisions and the same operation ids.

Matching rules (all on one aggregator account):
- a booked line seen for the first time claims the best pending line that is still pending (or was
  deleted while pending): same amount, dates at most `PENDING_WINDOW_DAYS` apart, similar memo, and an
  older aggregator id when ids are numbers. Deleted pending lines are preferred (they are surely
  gone), then the closest date, the most similar memo, the oldest id.
- a pending line seen for the first time after its booking (both in one sync, in any order) is
  claimed by that booked line, on the same criteria, when the ids prove the booking is newer.
- wrong guesses between look-alike lines are undone when the bank says more: a claimed pending line
  that books in place gets an operation back, and a pending line deleted while a look-alike was
  claimed in its place hands the claim over.
- two booked lines never merge: genuine twins stay two.
- `reconcile` mode: a line that claims nothing first looks for an unreconciled manual operation of the
  target account with the same amount, dates at most `MANUAL_WINDOW_DAYS` apart; ties go to the closest
  date, then the oldest manual operation id.

Known limit (no rule can tell these apart from what the bank says): a pending line booked in place
before any sync saw it pending, next to an older pending look-alike (same amount, similar memo, close
dates), looks exactly like that look-alike's booking under a new id. It takes the look-alike's
operation over and the look-alike is hidden until the bank books it (it then shows again) or deletes
it. The same holds for a pending line that vanishes from the listings, never marked deleted, next to
a look-alike. Each case shows one operation too few for a while, never one too many.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum

from services.importer.domain.identities import line_ref, operation_id
from services.importer.domain.memos import memo_similarity

PENDING_WINDOW_DAYS = 5
BOOKING_EARLIER_SLACK_DAYS = 1
MANUAL_WINDOW_DAYS = 4
MEMO_SIMILARITY = 0.5

RANK_PENDING, RANK_BOOKED, RANK_REMOVED = 0, 1, 2


class ImportMode(StrEnum):
    CREATE = "create"
    RECONCILE = "reconcile"


def version_of(timestamp: dt.datetime, *, pending: bool, removed: bool, content: str) -> str:
    """A totally ordered version: the line's last update, then its lifecycle, then its content.

    Equal timestamps order pending < booked < deleted (a line never goes back); equal everything
    orders by content hash, so any delivery order converges on the same version.
    """
    utc = timestamp.astimezone(dt.UTC) if timestamp.tzinfo else timestamp.replace(tzinfo=dt.UTC)
    rank = RANK_REMOVED if removed else RANK_PENDING if pending else RANK_BOOKED
    return f"{utc.strftime('%Y-%m-%dT%H:%M:%S.%f')}|{rank}|{content}"


def _number(txid: str) -> int | None:
    return int(txid) if txid.isdigit() else None


def _newer(older: str, newer: str) -> bool | None:
    """Whether the aggregator created `newer` after `older` (Powens ids grow); None when unknown."""
    a, b = _number(older), _number(newer)
    if a is None or b is None:
        return None
    return b > a


def _booking_window(pending: dt.date, booked: dt.date) -> bool:
    """A booking comes on the pending line's date or up to `PENDING_WINDOW_DAYS` later (a day of slack)."""
    return -BOOKING_EARLIER_SLACK_DAYS <= (booked - pending).days <= PENDING_WINDOW_DAYS


def _id_key(txid: str) -> tuple[int, str]:
    number = _number(txid)
    return (number, "") if number is not None else (1 << 62, txid)


# ---- the model -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """One version of an aggregator line, as one `transaction.observed` carried it."""

    txid: str
    date: dt.date
    amount: Decimal
    memo: str
    label: str
    pending: bool
    removed: bool
    version: str
    seen: dt.date
    sync: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    """What is known about one aggregator line, and what it stands for in the app."""

    txid: str
    date: dt.date
    amount: Decimal
    memo: str
    label: str
    pending: bool
    removed: bool
    version: str
    seen: dt.date
    was_pending: bool
    account_id: str
    op_id: str | None = None
    claimed_by: str | None = None
    claims: str | None = None
    reconciles: str | None = None
    removed_in: str | None = None
    since: str = ""

    @property
    def holds(self) -> bool:
        return self.op_id is not None or self.reconciles is not None

    @property
    def status(self) -> str:
        return "pending" if self.pending else "booked"

    def content(self) -> tuple[object, ...]:
        """What an operation shows of its line: a change here is an `operation.updated`."""
        return (self.txid, self.date, self.amount, self.memo, self.label, self.pending, self.account_id)

    def observed(self, obs: Observation) -> Line:
        return replace(
            self,
            date=obs.date,
            amount=obs.amount,
            memo=obs.memo,
            label=obs.label,
            pending=obs.pending,
            removed=obs.removed,
            version=obs.version,
            seen=max(self.seen, obs.seen),
            was_pending=self.was_pending or obs.pending,
            removed_in=self.removed_in if self.removed or not obs.removed else obs.sync,
        )

    @classmethod
    def first(cls, obs: Observation, account_id: str, was_pending: bool = False) -> Line:
        return cls(
            txid=obs.txid,
            date=obs.date,
            amount=obs.amount,
            memo=obs.memo,
            label=obs.label,
            pending=obs.pending,
            removed=obs.removed,
            version=obs.version,
            seen=obs.seen,
            was_pending=was_pending or obs.pending,
            account_id=account_id,
            removed_in=obs.sync if obs.removed else None,
            since=obs.sync,
        )


@dataclass(frozen=True, slots=True)
class ManualCandidate:
    """A manual operation of the target account that `reconcile` mode may match."""

    op_id: str
    date: dt.date
    amount: Decimal
    reconciled_by: str | None = None
    # lines (`line_ref`) whose match with it the user undid: never matched to it again
    refused: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    """Where new lines of one aggregator account go, and how."""

    akey: str
    account_id: str
    mode: ImportMode = ImportMode.CREATE


@dataclass
class AccountLines:
    """All lines of one aggregator account, plus the manual candidates loaded for this batch."""

    lines: dict[str, Line] = field(default_factory=dict)
    manual: dict[str, ManualCandidate] = field(default_factory=dict)
    _by_amount: dict[Decimal, set[str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_amount = {}
        for line in self.lines.values():
            self._by_amount.setdefault(line.amount, set()).add(line.txid)

    def copy(self) -> AccountLines:
        return AccountLines(dict(self.lines), dict(self.manual))

    # -- reading

    def visible(self) -> dict[str, Line]:
        """Operation id -> the line that holds it."""
        return {line.op_id: line for line in self.lines.values() if line.op_id is not None}

    def reconciliations(self) -> dict[str, Line]:
        """Manual operation id -> the line that reconciles it."""
        return {line.reconciles: line for line in self.lines.values() if line.reconciles is not None}

    # -- what the user asks

    def undo_reconciliation(self, manual_id: str, akey: str) -> Line | None:
        """The user undoes the match of a manual operation: the line that reconciles it becomes an
        operation of its own (an id of its own, the same on every retry), the manual operation a
        candidate again, for any line but this one (`ManualCandidate.refused`: the caller records the
        refusal on the manual operation). Returns the line, or None when no line reconciles it."""
        line = next((x for x in self.lines.values() if x.reconciles == manual_id), None)
        if line is None:
            return None
        own = replace(line, reconciles=None, op_id=operation_id(akey, line.txid, f"undone:{manual_id}"))
        self._put(own)
        self._release_reconciliation(manual_id)
        return own

    # -- writing

    def _put(self, line: Line) -> None:
        old = self.lines.get(line.txid)
        if old is not None and old.amount != line.amount:
            self._by_amount.get(old.amount, set()).discard(line.txid)
        self.lines[line.txid] = line
        self._by_amount.setdefault(line.amount, set()).add(line.txid)

    def _same_amount(self, amount: Decimal) -> list[Line]:
        return [self.lines[t] for t in sorted(self._by_amount.get(amount, ()), key=_id_key)]

    def forget(self, seen_before: dt.date) -> int:
        """Drops settled lines last observed before `seen_before` (older than the raw topic keeps)."""
        gone = [
            t
            for t, line in self.lines.items()
            if line.seen < seen_before and (line.removed or not line.pending)
        ]
        for txid in gone:
            line = self.lines.pop(txid)
            self._by_amount.get(line.amount, set()).discard(txid)
        return len(gone)

    # -- the rules

    def observe(self, obs: Observation, target: Target) -> None:
        current = self.lines.get(obs.txid)
        if current is not None and obs.version <= current.version:
            return  # a repeat or an older version: never regress
        if current is None:
            self._new(Line.first(obs, target.account_id), target, sync=obs.sync)
        elif current.removed and not obs.removed:
            self._revived(current, obs, target)
        elif obs.removed:
            self._removed(current, current.observed(obs), target)
        else:
            self._changed(current, current.observed(obs), target)

    def _new(self, line: Line, target: Target, salt: str = "", sync: str = "") -> None:
        if line.removed:
            self._put(line)  # seen only once gone: nothing to show, but it may explain a booking
            if line.pending:
                self._hand_over(line, None, None, target)
            return
        if not line.pending:
            pending = self._pending_for(line, sync=sync)
            if pending is not None:
                self._take_over(line, pending, target, salt)
                return
        else:
            booked = self._booking_for(line)
            if booked is not None:
                self._put(replace(booked, claims=line.txid))
                self._put(replace(line, claimed_by=booked.txid))
                return
        self._own(line, target, salt)

    def _own(self, line: Line, target: Target, salt: str) -> None:
        """The line stands for itself: a reconciled manual operation, or an operation of its own."""
        line = replace(line, account_id=target.account_id)
        if target.mode is ImportMode.RECONCILE:
            manual = self._manual_for(line, target)
            if manual is not None:
                self.manual[manual.op_id] = replace(manual, reconciled_by=line_ref(target.akey, line.txid))
                self._put(replace(line, reconciles=manual.op_id, op_id=None))
                return
        self._put(replace(line, op_id=operation_id(target.akey, line.txid, salt), reconciles=None))

    def _take_over(self, booked: Line, pending: Line, target: Target, salt: str) -> None:
        """`booked` is the booking of `pending` under a new id: one operation for the two."""
        self._put(replace(pending, claimed_by=booked.txid, op_id=None, reconciles=None))
        booked = replace(booked, claims=pending.txid)
        if pending.op_id is not None:
            self._put(replace(booked, op_id=pending.op_id, account_id=pending.account_id))
        elif pending.reconciles is not None:
            self._move_reconciliation(pending.reconciles, booked, target)
            self._put(replace(booked, reconciles=pending.reconciles, account_id=pending.account_id))
        else:
            self._own(booked, target, salt)

    def _move_reconciliation(self, manual_id: str, to: Line, target: Target) -> None:
        manual = self.manual.get(manual_id)
        if manual is not None:
            self.manual[manual_id] = replace(manual, reconciled_by=line_ref(target.akey, to.txid))

    def _release_reconciliation(self, manual_id: str) -> None:
        manual = self.manual.get(manual_id)
        if manual is not None:
            self.manual[manual_id] = replace(manual, reconciled_by=None)

    def _changed(self, before: Line, line: Line, target: Target) -> None:
        if before.claimed_by is not None and before.pending and not line.pending:
            # a pending line we took for another line's booking books in place: it was not
            self._put(line)
            self._unclaim(line, target)
            return
        self._put(line)

    def _unclaim(self, line: Line, target: Target) -> None:
        assert line.claimed_by is not None
        booked = self.lines.get(line.claimed_by)
        line = replace(line, claimed_by=None)
        self._put(line)
        if booked is None or booked.claims != line.txid:
            self._own(line, target, salt=line.version)
            return
        booked = replace(booked, claims=None)
        self._put(booked)
        other = self._pending_for(booked, exclude=line.txid)
        if other is not None and other.holds and not other.removed:
            # the booked line was the booking of another look-alike: that one's operation is this line's
            self._put(replace(booked, claims=other.txid))
            self._put(replace(other, claimed_by=booked.txid, op_id=None, reconciles=None))
            if other.reconciles is not None:
                self._move_reconciliation(other.reconciles, line, target)
            self._put(
                replace(line, op_id=other.op_id, reconciles=other.reconciles, account_id=other.account_id)
            )
            return
        if other is not None:
            self._put(replace(booked, claims=other.txid))
            self._put(replace(other, claimed_by=booked.txid))
        self._own(line, target, salt=line.version)

    def _removed(self, before: Line, line: Line, target: Target) -> None:
        line = replace(line, op_id=None, reconciles=None)
        self._put(line)
        if not before.holds:
            return  # hidden (claimed) or already nothing
        claimed = self.lines.get(before.claims) if before.claims else None
        if claimed is not None and not claimed.removed and claimed.pending:
            # a booking withdrawn while its pending line is still there: the pending line shows again
            self._put(replace(line, claims=None))
            self._put(replace(claimed, claimed_by=None, op_id=before.op_id, reconciles=before.reconciles))
            if before.reconciles is not None:
                self._move_reconciliation(before.reconciles, claimed, target)
            return
        if before.pending and self._hand_over(line, before.op_id, before.reconciles, target):
            return
        if before.reconciles is not None:
            self._release_reconciliation(before.reconciles)

    def _hand_over(self, gone: Line, op_id: str | None, reconciles: str | None, target: Target) -> bool:
        """A pending line deleted in the sync that brought a booking whose claim went to a look-alike.

        The booking was this line's, not the look-alike's: the claim moves here and the look-alike,
        still pending, shows again (with this line's operation when it had one).
        """
        swap = self._claimed_look_alike(gone)
        if swap is None:
            lone = self._booking_for(gone, since=gone.removed_in)
            if lone is not None:
                # a booking that came with this deletion and claimed nothing yet: it was this line's
                self._put(replace(lone, claims=gone.txid))
                self._put(replace(self.lines[gone.txid], claimed_by=lone.txid))
            return False
        booked, look_alike = swap
        self._put(replace(booked, claims=gone.txid))
        self._put(replace(self.lines[gone.txid], claimed_by=booked.txid))
        look_alike = replace(look_alike, claimed_by=None)
        self._put(look_alike)
        other = self._booking_for(look_alike)
        if other is not None:
            # and the look-alike's own booking is there too: it stays hidden behind that one
            self._put(replace(other, claims=look_alike.txid))
            self._put(replace(look_alike, claimed_by=other.txid))
            if reconciles is not None:
                self._release_reconciliation(reconciles)
            return True
        if op_id is None and reconciles is None:
            self._own(look_alike, target, salt=look_alike.version)
            return True
        self._put(replace(look_alike, op_id=op_id, reconciles=reconciles))
        if reconciles is not None:
            self._move_reconciliation(reconciles, look_alike, target)
        return True

    def _revived(self, before: Line, obs: Observation, target: Target) -> None:
        """A deleted line shows again (rare): a new start, with an operation id of its own."""
        if before.claimed_by is not None:
            booked = self.lines.get(before.claimed_by)
            if booked is not None and booked.claims == before.txid:
                self._put(replace(booked, claims=None))
        line = replace(before.observed(obs), claimed_by=None, claims=None, op_id=None, reconciles=None)
        self._new(line, target, salt=obs.version, sync=obs.sync)

    # -- matching

    def _pending_for(self, booked: Line, exclude: str | None = None, sync: str | None = None) -> Line | None:
        best: Line | None = None
        best_key: tuple[object, ...] | None = None
        for candidate in self._same_amount(booked.amount):
            if candidate.txid in (booked.txid, exclude) or not candidate.was_pending:
                continue
            if candidate.claims is not None or candidate.claimed_by not in (None, booked.txid):
                continue
            if not candidate.pending:
                continue  # booked (in place) or deleted once booked: not a pending line any more
            if not candidate.removed and not candidate.holds:
                continue
            if (
                not _booking_window(candidate.date, booked.date)
                or _newer(candidate.txid, booked.txid) is False
            ):
                continue
            similarity = memo_similarity(candidate, booked)
            if similarity < MEMO_SIMILARITY:
                continue
            # deleted in the sync that brought the booking: surely its pending line; deleted earlier:
            # a cancelled one, the least likely
            group = (0 if sync and candidate.removed_in == sync else 2) if candidate.removed else 1
            gap = abs((booked.date - candidate.date).days)
            key = (group, gap, -similarity, _id_key(candidate.txid))
            if best_key is None or key < best_key:
                best, best_key = candidate, key
        return best

    def _booking_for(self, pending: Line, since: str | None = None) -> Line | None:
        best: Line | None = None
        best_key: tuple[object, ...] | None = None
        for candidate in self._same_amount(pending.amount):
            if candidate.txid == pending.txid or candidate.removed or candidate.pending:
                continue
            if candidate.was_pending or candidate.claims is not None or not candidate.holds:
                continue
            if since is not None and candidate.since != since:
                continue
            if _newer(pending.txid, candidate.txid) is not True:
                continue  # only a booking created after the pending line can be its booking
            if not _booking_window(pending.date, candidate.date):
                continue
            gap = abs((candidate.date - pending.date).days)
            similarity = memo_similarity(candidate, pending)
            if similarity < MEMO_SIMILARITY:
                continue
            key = (gap, -similarity, _id_key(candidate.txid))
            if best_key is None or key < best_key:
                best, best_key = candidate, key
        return best

    def _claimed_look_alike(self, gone: Line) -> tuple[Line, Line] | None:
        """A booked line that claimed a still-pending look-alike of `gone` instead of `gone` itself."""
        best: tuple[Line, Line] | None = None
        best_key: tuple[object, ...] | None = None
        for booked in self._same_amount(gone.amount):
            if booked.pending or booked.removed or booked.claims is None or booked.claims == gone.txid:
                continue
            look_alike = self.lines.get(booked.claims)
            if look_alike is None or look_alike.removed or not look_alike.pending:
                continue
            if look_alike.claimed_by != booked.txid or booked.since != gone.removed_in:
                continue  # only a deletion that came with the booking tells which line it was
            if not _booking_window(gone.date, booked.date) or _newer(gone.txid, booked.txid) is False:
                continue
            gap = abs((booked.date - gone.date).days)
            similarity = memo_similarity(gone, booked)
            if similarity < MEMO_SIMILARITY:
                continue
            key = (gap, -similarity, _id_key(booked.txid))
            if best_key is None or key < best_key:
                best, best_key = (booked, look_alike), key
        return best

    def _manual_for(self, line: Line, target: Target) -> ManualCandidate | None:
        me = line_ref(target.akey, line.txid)
        best: ManualCandidate | None = None
        best_key: tuple[int, str] | None = None
        for manual in self.manual.values():
            if manual.reconciled_by not in (None, me) or manual.amount != line.amount:
                continue
            if me in manual.refused:
                continue  # the user undid this very match
            gap = abs((manual.date - line.date).days)
            if gap > MANUAL_WINDOW_DAYS:
                continue
            key = (gap, manual.op_id)
            if best_key is None or key < best_key:
                best, best_key = manual, key
        return best


# ---- applying a batch and telling what changed ---------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """What one batch changed in the app, in the order the lines came."""

    imported: list[Line] = field(default_factory=list)
    updated: list[Line] = field(default_factory=list)
    deleted: list[tuple[str, Line]] = field(default_factory=list)
    reconciled: list[tuple[str, Line]] = field(default_factory=list)
    unreconciled: list[tuple[str, Line]] = field(default_factory=list)
    rereconciled: list[tuple[str, Line]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.imported
            or self.updated
            or self.deleted
            or self.reconciled
            or self.unreconciled
            or self.rereconciled
        )


def apply(
    state: AccountLines, observations: Iterable[Observation], target: Target
) -> tuple[AccountLines, Changes]:
    """Applies observations in order to a copy of `state`; returns it and what changed."""
    after = state.copy()
    for obs in observations:
        after.observe(obs, target)
    return after, diff(state, after)


def diff(before: AccountLines, after: AccountLines) -> Changes:
    changes = Changes()
    old_ops, new_ops = before.visible(), after.visible()
    for op_id, line in new_ops.items():
        previous = old_ops.get(op_id)
        if previous is None:
            changes.imported.append(line)
        elif previous.content() != line.content():
            changes.updated.append(line)
    for op_id, line in old_ops.items():
        if op_id not in new_ops:
            changes.deleted.append((op_id, line))
    old_rec, new_rec = before.reconciliations(), after.reconciliations()
    for manual_id, line in new_rec.items():
        previous = old_rec.get(manual_id)
        if previous is None:
            changes.reconciled.append((manual_id, line))
        elif previous.txid != line.txid or previous.content() != line.content():
            changes.rereconciled.append((manual_id, line))
    for manual_id, line in old_rec.items():
        if manual_id not in new_rec:
            changes.unreconciled.append((manual_id, line))
    return changes


# ---- what is stored of an aggregator account's lines -----------------------------------------------------


@dataclass
class StoredState:
    """The dedup state of one aggregator account as stored: its lines, the revision the next store
    compares against (0: never stored) and the app accounts its lines went to."""

    akey: str
    user_id: str = ""
    rev: int = 0
    lines: dict[str, Line] = field(default_factory=dict)
    accounts: set[str] = field(default_factory=set)

    def account_lines(self) -> AccountLines:
        return AccountLines(dict(self.lines))
