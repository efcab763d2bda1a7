"""The categorizer's projection in month sheets, on the real engine: each write adds entries, entries of
an operation apply in the order written (except the user's choice and the rules' result, ranked by
choice number and rules version whatever order writers from several replicas land in), deletions
stick, a moved operation is where it was written last, a long sheet folds into one document, and
operations kept one document each are adopted."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from harness.devstack import Engines
from services.categorizer.adapters.mongo import Doc, OperationsRepository, projection_sheet
from services.categorizer.domain.matching import Categorization
from services.categorizer.ports import Seen
from shared.mongo import make_client

USER = "user-1"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
RULE = Categorization(None, None, "alimentation", "global", "CARREFOUR")
MANUAL = Categorization("p1", "Chez Paul", "restaurants", "manual", None)


@pytest.fixture
async def db(engines: Engines) -> AsyncIterator[AsyncDatabase[Doc]]:
    client = make_client(engines.mongodb_url)
    database = client[f"proj_{uuid.uuid4().hex[:8]}"]
    try:
        yield database
    finally:
        await client.drop_database(database.name)
        await client.close()


@pytest.fixture
async def projection(db: AsyncDatabase[Doc]) -> OperationsRepository:
    repository = OperationsRepository(db)
    await repository.create_indexes()
    return repository


def seen(op_id: str, memo: str = "CB CARREFOUR", month: str = "2026-11", version: int | None = 1) -> Seen:
    result = RULE if version is not None else None
    return Seen(USER, op_id, "acc", memo, "", version, result, None, month)


async def test_a_write_adds_entries_and_reads_merge_them(projection: OperationsRepository) -> None:
    await projection.write_seen([seen("a"), seen("b", month="2026-10")], T0)
    # a later event without a result keeps the result; the memo it carries wins
    await projection.write_seen([seen("a", memo="CB CARREFOUR MARKET", version=None)], T0)
    found = await projection.get_many([(USER, "acc", "a", "2026-11"), (USER, "acc", "b", "2026-10")])
    a = found[f"{USER}:a"]
    assert (a.memo, a.seen_version, a.result, a.month) == ("CB CARREFOUR MARKET", 1, RULE, "2026-11")
    assert found[f"{USER}:b"].month == "2026-10"
    assert await projection.get_many([(USER, "acc", "a", "2026-09")]) == {}
    assert {op.operation_id for op in [op async for op in projection.of_user(USER)]} == {"a", "b"}
    assert [op async for op in projection.of_user("someone-else")] == []


async def test_corrections_and_catch_up_add_to_what_is_there(projection: OperationsRepository) -> None:
    await projection.write_seen([seen("a")], T0)
    op = await projection.get(USER, "a")
    assert op is not None
    assert op.manual is None
    # the same instant for every write: the process's own order still decides
    await projection.set_choice(op, MANUAL, op.choice + 1, T0)
    await projection.set_seen_version([(seen("a"), 3, Categorization())], T0)
    after = await projection.get(USER, "a")
    assert after is not None
    assert (after.manual, after.seen_version, after.result, after.memo) == (
        MANUAL,
        3,
        Categorization(),
        "CB CARREFOUR",
    )


async def test_a_deleted_operation_stays_deleted_until_seen_again(projection: OperationsRepository) -> None:
    await projection.write_seen([seen("a"), seen("b")], T0)
    await projection.delete(USER, "acc", "2026-11", ["a"], T0 + timedelta(seconds=1))
    assert await projection.get(USER, "a") is None
    assert set(await projection.get_many([(USER, "acc", "a", "2026-11")])) == set()
    # a re-import after the deletion brings it back without what it had before the deletion
    await projection.write_seen([seen("a", version=None)], T0 + timedelta(seconds=2))
    back = await projection.get(USER, "a")
    assert back is not None
    assert back.result is None
    assert back.seen_version == 0


async def test_an_operation_whose_date_moved_is_where_it_was_written_last(
    projection: OperationsRepository,
) -> None:
    await projection.write_seen([seen("a", month="2026-10")], T0)
    await projection.write_seen(
        [seen("a", memo="CB CARREFOUR CITY", month="2026-11")], T0 + timedelta(seconds=1)
    )
    ops = [op async for op in projection.of_user(USER)]
    assert [(op.operation_id, op.month, op.memo) for op in ops] == [("a", "2026-11", "CB CARREFOUR CITY")]


async def test_a_long_sheet_folds_into_one_document(projection: OperationsRepository) -> None:
    sheets = projection.sheets
    for n in range(sheets.FOLD_AFTER):
        await projection.write_seen([seen(f"op-{n}"), seen("a", memo=f"CB {n}")], T0 + timedelta(seconds=n))
    await projection.delete(USER, "acc", "2026-11", ["op-0"], T0 + timedelta(seconds=30))
    await sheets.fold(projection_sheet(USER, "acc", "2026-11"))
    parts = await sheets.coll.find({"sheet": projection_sheet(USER, "acc", "2026-11")}).to_list()
    assert len(parts) == 1
    ops = {op.operation_id: op async for op in projection.of_user(USER)}
    assert set(ops) == {"a", *(f"op-{n}" for n in range(1, sheets.FOLD_AFTER))}
    assert ops["a"].memo == f"CB {sheets.FOLD_AFTER - 1}"


async def test_operations_kept_one_document_each_are_adopted(
    db: AsyncDatabase[Doc], projection: OperationsRepository
) -> None:
    result = {
        "payee_id": None,
        "payee_name": None,
        "category": "alimentation",
        "source": "global",
        "keyword": "X",
    }
    manual = {"payee_id": "p1", "payee_name": "Chez Paul", "category": "restaurants", "source": "manual",
              "keyword": None}  # fmt: skip
    await db["categorizer_operations"].insert_many(
        [
            {"_id": f"{USER}:a", "user_id": USER, "operation_id": "a", "account_id": "acc", "memo": "CB X",
             "label": "", "seen_at": T0, "seen_version": 2, "result": result, "month": "2026-11"},
            {"_id": f"{USER}:b", "user_id": USER, "operation_id": "b", "account_id": "acc", "memo": "CB Y",
             "label": "Y", "seen_at": T0, "seen_version": 1, "result": result, "manual": manual},
        ]
    )  # fmt: skip
    assert await projection.adopt_legacy(batch=1) == 2
    assert await projection.adopt_legacy() == 0
    assert await db["categorizer_operations"].count_documents({}) == 0
    ops = {op.operation_id: op async for op in projection.of_user(USER)}
    assert (ops["a"].month, ops["a"].seen_version, ops["a"].result) == (
        "2026-11",
        2,
        replace(RULE, keyword="X"),
    )
    assert (ops["b"].month, ops["b"].label, ops["b"].manual) == (None, "Y", MANUAL)
    # a write after the adoption applies over what was adopted
    await projection.write_seen([Seen(USER, "b", "acc", "CB Y2", "Y", None, None)], T0 + timedelta(days=1))
    b = await projection.get(USER, "b")
    assert b is not None
    assert (b.memo, b.manual) == ("CB Y2", MANUAL)


async def test_deleting_an_account_deletes_its_sheets_only(projection: OperationsRepository) -> None:
    await projection.write_seen([seen("a"), Seen(USER, "z", "other", "CB", "", 1, RULE, None, "2026-11")], T0)
    assert await projection.delete_account(USER, "acc") == 1
    assert [op.operation_id async for op in projection.of_user(USER)] == ["z"]


OTHER = Categorization("p2", "Chez Pierre", "loisirs", "manual", None)


async def test_a_choice_read_before_a_correction_never_comes_back(projection: OperationsRepository) -> None:
    """What the user chose is ranked by its number, not by which write lands last: a batch of another
    replica (or one that lost its partition, or whose clock is behind) restating what it read before a
    correction never brings the older choice back, before a fold or after it."""
    await projection.write_seen([seen("a")], T0)
    op = await projection.get(USER, "a")
    assert op is not None
    await projection.set_choice(op, MANUAL, 1, T0 + timedelta(seconds=1))
    # a batch that read the operation before the correction: no choice of its own, written later
    await projection.write_seen([seen("a", memo="CB CARREFOUR 2")], T0 + timedelta(seconds=2))
    # one that read the importer's older manual choice (number 0), written later still
    restated = replace(seen("a", memo="CB CARREFOUR 2", version=None), manual=OTHER, choice=0)
    await projection.write_seen([restated], T0 + timedelta(seconds=3))
    now = await projection.get(USER, "a")
    assert now is not None
    assert (now.manual, now.choice, now.memo) == (MANUAL, 1, "CB CARREFOUR 2")
    # forgotten (number 2): a batch restating choice 1, written after, does not bring it back either
    await projection.set_choice(now, None, 2, T0 + timedelta(seconds=4), seen=(5, RULE))
    await projection.write_seen(
        [replace(seen("a", memo="CB CARREFOUR 2", version=None), manual=MANUAL, choice=1)],
        T0 + timedelta(seconds=5),
    )
    for _ in range(2):
        after = await projection.get(USER, "a")
        assert after is not None
        assert (after.manual, after.choice, after.seen_version) == (None, 2, 5)
        await projection.sheets.fold(projection_sheet(USER, "acc", "2026-11"))


async def test_an_older_rules_result_written_later_does_not_replace_a_newer_one(
    projection: OperationsRepository,
) -> None:
    """The rules' result kept is the newest rules version's (as the importer ranks them), whichever write
    lands last; among equals, the later one (a memo that changed)."""
    await projection.write_seen([seen("a", version=3)], T0 + timedelta(seconds=1))
    # a pairing on another replica that read version 2 writes its result after
    op = await projection.get(USER, "a")
    assert op is not None
    await projection.set_results([(op, 2, Categorization())], T0 + timedelta(seconds=2))
    # written earlier (a clock behind), arriving after a fold: still ranked
    await projection.sheets.fold(projection_sheet(USER, "acc", "2026-11"))
    await projection.write_seen([seen("a", version=1)], T0)
    after = await projection.get(USER, "a")
    assert after is not None
    assert (after.seen_version, after.result) == (3, RULE)
    await projection.write_seen([seen("a", memo="CB CARREFOUR CITY", version=3)], T0 + timedelta(seconds=3))
    await projection.set_results([(after, 3, Categorization())], T0 + timedelta(seconds=4))
    last = await projection.get(USER, "a")
    assert last is not None
    assert (last.seen_version, last.result, last.memo) == (3, Categorization(), "CB CARREFOUR CITY")
