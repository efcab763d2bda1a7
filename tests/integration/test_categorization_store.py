"""Storing categorisations in the account's month sheets, on the real engine: what the app reads is the
operation with the strongest categorisation; a sheet write is conditional on the revision it was decided
on."""

from __future__ import annotations

from typing import Any

import pytest

from services.importer.adapters import CATEGORIZATION_DEFAULTS, OperationStore, SheetChange
from services.importer.handlers import Categorizations
from shared.schemas import OperationCategorized

USER = "user-1"


@pytest.fixture
def store(operation_store: OperationStore) -> OperationStore:
    return operation_store


def operation(op_id: str, user: str = USER, month: str = "2026-11") -> dict[str, Any]:
    return {
        "_id": op_id,
        "user_id": user,
        "account_id": "acc",
        "memo": "CB",
        "date": f"{month}-15",
        "month": month,
        "filed": f"acc:{month}",
        **CATEGORIZATION_DEFAULTS,
    }


def categorized(
    op_id: str,
    source: str | None,
    category: str | None,
    version: int,
    account: str = "acc",
    month: str | None = None,
) -> OperationCategorized:
    return OperationCategorized(
        user_id=USER,
        account_id=account,
        operation_id=op_id,
        payee={"id": f"payee-{category}", "name": str(category)} if category else None,
        category=category,
        source=source,
        keyword="KW" if source in ("user", "global") else None,
        rules_version=version,
        month=month,
    )


async def apply(store: OperationStore, *items: OperationCategorized) -> int:
    return await Categorizations(store).apply(list(items))


async def doc(store: OperationStore, op_id: str) -> dict[str, Any]:
    found = await store.get(op_id)
    assert found is not None
    return found


async def test_a_categorisation_is_stored_on_its_operation(store: OperationStore) -> None:
    await store.insert_new([operation("a"), operation("b")])
    assert (
        await apply(store, categorized("a", "global", "alimentation", 0), categorized("b", None, None, 0))
        == 2
    )
    a = await doc(store, "a")
    assert a["category"] == "alimentation"
    assert a["categorized_by"] == {"source": "global", "payee_id": "payee-alimentation", "keyword": "KW"}
    assert a["categorized_at"] is not None
    b = await doc(store, "b")
    assert (b["cat_rv"], b["category"], b["categorized_by"]) == (0, None, None)
    assert await apply(store, categorized("b", None, None, 0)) == 0  # an exact repeat is not written


async def test_the_users_choice_wins_and_an_older_rule_set_comes_too_late(store: OperationStore) -> None:
    await store.insert_new([operation("a"), operation("b")])
    await apply(
        store,
        categorized("a", "global", "alimentation", 1),
        categorized("a", "manual", "loisirs", 1),
        categorized("a", "user", "shopping", 2),  # a rule result never replaces the user's choice
        categorized("b", "user", "energie", 2),
        categorized("b", "global", "divers", 1),  # an older rule set's result comes late
    )
    a, b = await doc(store, "a"), await doc(store, "b")
    assert (a["category"], a["cat_src"]) == ("loisirs", "manual")
    assert (b["category"], b["cat_rv"]) == ("energie", 2)
    await apply(store, categorized("a", "manual", "shopping", 2))  # the user changes their mind
    assert (await doc(store, "a"))["category"] == "shopping"


async def test_another_users_operation_and_exact_repeats_are_not_written(store: OperationStore) -> None:
    await store.insert_new([operation("a"), operation("x", user="someone-else")])
    # the result for another user's operation lands in this user's sheet: it never shows on it
    await apply(store, categorized("a", "user", "sante", 3), categorized("x", "user", "sante", 3))
    assert (await doc(store, "x"))["category"] is None
    first = (await doc(store, "a"))["categorized_at"]
    assert await apply(store, categorized("a", "user", "sante", 3)) == 0  # a redelivery or a replay
    assert (await doc(store, "a"))["categorized_at"] == first
    assert await apply(store, categorized("a", "user", "sante", 4)) == 1  # newer rules: the version moves
    assert (await doc(store, "a"))["cat_rv"] == 4
    assert await apply(store, categorized("gone", "user", "sante", 4)) == 0  # no such operation, no month
    assert await store.get("gone") is None


async def test_accounts_are_written_side_by_side_each_in_order(store: OperationStore) -> None:
    ops = [
        {**operation(f"{acc}-{i}"), "account_id": acc, "filed": f"{acc}:2026-11"}
        for acc in ("p", "q", "r")
        for i in range(120)
    ]
    await store.insert_new(ops)
    items = [categorized(o["_id"], "global", "transport", 1, account=o["account_id"]) for o in ops]
    items += [categorized("p-0", "global", "loisirs", 2, account="p")]  # a later result, same batch
    assert await apply(store, *items) == len(ops)  # one write per operation: the last word
    assert (await doc(store, "p-0"))["category"] == "loisirs"
    assert (await doc(store, "r-119"))["category"] == "transport"


async def test_one_result_for_many_operations_keeps_the_rules(
    store: OperationStore,
) -> None:
    ops = [operation(f"m-{i}") for i in range(40)] + [operation("other-user", user="someone-else")]
    await store.insert_new(ops)
    await apply(store, categorized("m-3", "manual", "loisirs", 1), categorized("m-4", "user", "sante", 5))
    # a new payee recognises them all (rules version 2): the user's choice and a newer result stay
    items = [categorized(f"m-{i}", "user", "alimentation", 2) for i in range(40)]
    items.append(categorized("other-user", "user", "alimentation", 2))
    assert await apply(store, *items) == 39  # 38, and the other user's: stored, never shown (below)
    assert (await doc(store, "m-0"))["category"] == "alimentation"
    assert (await doc(store, "m-39"))["cat_rv"] == 2
    assert ((await doc(store, "m-3"))["category"], (await doc(store, "m-3"))["cat_src"]) == (
        "loisirs",
        "manual",
    )
    assert (await doc(store, "m-4"))["category"] == "sante"
    assert (await doc(store, "other-user"))["category"] is None
    assert await apply(store, *items) == 0  # redelivered: nothing to write


async def test_a_batch_is_one_sheet_per_account_and_month(store: OperationStore) -> None:
    months = ("2026-09", "2026-10", "2026-11")
    ops = [operation(f"s-{i}", month=months[i % 3]) for i in range(90)]
    await store.insert_new(ops)
    items = [categorized(o["_id"], "global", "transport", 1, month=o["month"]) for o in ops]
    assert await apply(store, *items) == 90
    sheets = await store.sheets.coll.find({"account_id": "acc"}).to_list()
    assert sorted(s["_id"] for s in sheets) == [f"acc:{m}" for m in months]
    assert all(len(s["ops"]) == 30 and s["v"] == 1 for s in sheets)
    page = await store.page(USER, "acc", months=months, date_from=None, date_to=None, after=None, limit=100)
    assert {d["category"] for d in page.items} == {"transport"}
    await apply(store, *(categorized(o["_id"], "user", "loisirs", 2, month=o["month"]) for o in ops[:3]))
    assert sorted(s["v"] for s in await store.sheets.coll.find({"account_id": "acc"}).to_list()) == [2, 2, 2]


async def test_an_operation_that_moved_month_is_still_found(store: OperationStore) -> None:
    await store.insert_new([operation("m", month="2026-10")])
    await apply(store, categorized("m", "global", "sante", 1, month="2026-10"))
    # the bank moves its date (pending to booked): results name its new month, or (from before
    # months) none; the app shows the strongest of its sheets' entries
    await store.coll.update_one({"_id": "m"}, {"$set": {"month": "2026-11", "date": "2026-11-02"}})
    assert (await doc(store, "m"))["category"] == "sante"
    await apply(store, categorized("m", "user", "loisirs", 2, month="2026-11"))
    assert ((await doc(store, "m"))["category"], (await doc(store, "m"))["cat_rv"]) == ("loisirs", 2)
    await apply(store, categorized("m", "user", "energie", 3))  # no month: found by id, its filed sheet
    assert (await doc(store, "m"))["category"] == "energie"
    await apply(store, categorized("m", "manual", "voyages", 3, month="2026-11"))
    await apply(store, categorized("m", "user", "sante", 4))  # the user's choice stays
    assert (await doc(store, "m"))["category"] == "voyages"
    page = await store.page(
        USER, "acc", months=["2026-11"], date_from=None, date_to=None, after=None, limit=9
    )
    assert [d["category"] for d in page.items] == ["voyages"]


async def test_a_categorisation_stored_on_the_operation_itself_still_ranks(store: OperationStore) -> None:
    """Operations categorised before sheets existed keep their categorisation until a stronger one."""
    legacy = {**operation("old"), "category": "loisirs", "cat_src": "manual", "cat_rv": 1}
    legacy.pop("filed")
    await store.insert_new(
        [legacy, {**operation("old2"), "category": "sante", "cat_src": "user", "cat_rv": 4}]
    )
    # weaker results are filed in the sheets (the operations are not read), and never shown
    await apply(store, categorized("old", "user", "shopping", 5), categorized("old2", "user", "x", 3))
    assert (await doc(store, "old"))["category"] == "loisirs"
    assert (await doc(store, "old2"))["category"] == "sante"
    assert await apply(store, categorized("old2", "user", "energie", 5)) == 1
    assert (await doc(store, "old2"))["category"] == "energie"


async def test_a_sheet_write_decided_on_an_old_revision_is_refused(store: OperationStore) -> None:
    await store.insert_new([operation("r")])
    await apply(store, categorized("r", "global", "sante", 1))
    entry = {"category": "loisirs", "cat_src": "user", "cat_rv": 9}
    stale = SheetChange("acc:2026-11", USER, "acc", "2026-11", 0, {"r": entry})
    assert await store.sheets.write([stale]) is False  # another writer moved it to revision 1
    again = SheetChange("acc:2026-11", USER, "acc", "2026-11", None, {"r": entry})
    assert await store.sheets.write([again]) is False  # it exists: not created twice
    assert (await doc(store, "r"))["category"] == "sante"
    assert await store.sheets.write([SheetChange("acc:2026-11", USER, "acc", "2026-11", 1, {"r": entry})])
    assert (await doc(store, "r"))["category"] == "loisirs"
