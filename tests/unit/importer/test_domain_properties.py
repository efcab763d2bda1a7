"""Property: whatever the bank does and however Kafka delivers it, one operation per bank line.

For any history (in-place bookings, bookings under a new id, deletions, cancellations, rewording,
twins), any order within a sync, any redelivery of old records, a consumer group reset or a replay,
the operations shown are exactly the bank's final booked lines plus its still-pending ones.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.importer.domain.lines import AccountLines, Observation, Target, apply
from tests.unit.importer.bank_sim import ACTIONS, Bank, play

TARGET = Target(akey="u1:acc-1", account_id="account-1")

step = st.tuples(st.sampled_from(ACTIONS), st.integers(0, 30), st.integers(0, 30), st.booleans())
steps = st.lists(step, max_size=60)
long_steps = st.lists(step, min_size=40, max_size=120)
redeliveries = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), max_size=15)


def deliver(
    published: list[Observation], duplicates: list[tuple[int, int]], replay_from: int | None
) -> list[Observation]:
    """Redelivers old records at later places (older versions after newer ones), then maybe replays."""
    delivered = list(published)
    for source, place in duplicates:
        if not published:
            break
        position = source % len(delivered)  # a record already delivered comes again, later
        delivered.insert(position + 1 + place % (len(delivered) - position), delivered[position])
    if replay_from is not None and published:
        delivered += published[replay_from % len(published) :]
    return delivered


def shown(state: AccountLines) -> list[tuple[str, object, object, str]]:
    return sorted((line.status, line.date, line.amount, line.memo) for line in state.visible().values())


def check_invariants(state: AccountLines) -> None:
    holders = [line for line in state.lines.values() if line.op_id is not None]
    assert len({line.op_id for line in holders}) == len(holders), "an operation held twice"
    for line in state.lines.values():
        assert not (line.op_id and line.claimed_by), f"{line.txid} both shown and claimed"
        assert not (line.op_id and line.removed), f"{line.txid} shown though deleted"
        if line.claims:
            claimed = state.lines.get(line.claims)
            assert claimed is not None, f"{line.txid} claims a line unknown"
            assert claimed.claimed_by == line.txid, f"{line.txid} claim dangling"


def check_history(steps, duplicates, replay_from) -> None:
    bank = Bank()
    published = play(bank, steps)
    state, _ = apply(AccountLines(), deliver(published, duplicates, replay_from), TARGET)

    check_invariants(state)
    assert shown(state) == bank.expected()
    if bank.vanishings == 0:
        assert {line.txid for line in state.visible().values()} == bank.expected_ids()
    # what the history went through, for --hypothesis-show-statistics
    lines = state.lines.values()
    event("a booking under a new id", payload=any(line.claims for line in lines))
    event(
        "a pending line still hidden behind its booking",
        payload=any(line.claimed_by and not line.removed for line in lines),
    )
    event("a pending line vanished", payload=bank.vanishings > 0)
    event("twins", payload=len(bank.expected()) != len(set(bank.expected())))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, duplicates=redeliveries, replay_from=st.none() | st.integers(0, 10_000))
def test_one_operation_per_final_bank_line(steps, duplicates, replay_from):
    check_history(steps, duplicates, replay_from)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=long_steps, duplicates=redeliveries, replay_from=st.none() | st.integers(0, 10_000))
def test_one_operation_per_final_bank_line_over_long_histories(steps, duplicates, replay_from):
    check_history(steps, duplicates, replay_from)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps | long_steps, split=st.integers(0, 10_000))
def test_batches_and_restarts_give_the_same_result_as_one_pass(steps, split):
    """Cutting the log into two batches (a restart in between) changes nothing, nor does a full re-read."""
    published = play(Bank(), steps)
    whole, _ = apply(AccountLines(), published, TARGET)
    cut = split % (len(published) + 1)
    first, _ = apply(AccountLines(), published[:cut], TARGET)
    second, _ = apply(first, published[cut:], TARGET)
    again, changes = apply(second, published, TARGET)

    assert second.lines == whole.lines
    assert again.lines == whole.lines
    assert changes.empty


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps | long_steps)
def test_operation_ids_survive_a_rebuild(steps):
    """Deleting the account's state and replaying the log gives back the same operation ids."""
    published = play(Bank(), steps)
    first, _ = apply(AccountLines(), published, TARGET)
    rebuilt, changes = apply(AccountLines(), published, TARGET)
    assert first.visible().keys() == rebuilt.visible().keys()
    assert {op: line.txid for op, line in first.visible().items()} == {
        op: line.txid for op, line in rebuilt.visible().items()
    }
    assert len(changes.imported) == len(rebuilt.visible())
