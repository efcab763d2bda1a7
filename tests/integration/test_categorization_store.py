"""Storing categorisations in the account's month sheets, on the real engine: a batch adds a document to
each sheet it touches, a long sheet is folded, and what the app reads is the operation with the
strongest of its own categorisation and its sheets' entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from services.importer.adapters.mongo import (
    CATEGORIZATION_DEFAULTS,
    CategorizationSheets,
    MongoCategorizations,
    OperationStore,
)
from services.importer.handlers.categorizations import Categorizations
from shared.contract.payloads import OperationCategorized

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
    return await Categorizations(MongoCategorizations(store)).apply(list(items))


async def doc(store: OperationStore, op_id: str) -> dict[str, Any]:
    found = await store.get(op_id)
    assert found is not None
    return found


async def shown(store: OperationStore, op_id: str) -> tuple[Any, ...]:
    found = await doc(store, op_id)
    return (found["category"], found["cat_src"], found["cat_rv"])


async def parts(store: OperationStore, account: str = "acc") -> list[dict[str, Any]]:
    return await store.sheets.find({"account_id": account})


async def test_a_categorisation_is_stored_for_its_operation(store: OperationStore) -> None:
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
    assert (await store.coll.find_one({"_id": "a"}) or {})["category"] is None  # the operation is not written


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
    assert await shown(store, "a") == ("loisirs", "manual", 1)
    assert await shown(store, "b") == ("energie", "user", 2)
    # the same, one batch each: what is shown does not depend on how the results were batched
    await apply(store, categorized("a", "user", "shopping", 3))
    await apply(store, categorized("b", "global", "divers", 1))
    assert await shown(store, "a") == ("loisirs", "manual", 1)
    assert await shown(store, "b") == ("energie", "user", 2)
    await apply(store, categorized("a", "manual", "shopping", 2))  # the user changes their mind
    assert await shown(store, "a") == ("shopping", "manual", 2)


async def test_another_users_operation_repeats_and_unknown_operations(store: OperationStore) -> None:
    await store.insert_new([operation("a"), operation("x", user="someone-else")])
    # the result for another user's operation is filed as that user's entry: it never shows on it
    await apply(store, categorized("a", "user", "sante", 3), categorized("x", "user", "sante", 3))
    assert await shown(store, "x") == (None, None, -1)
    before = await shown(store, "a")
    await apply(store, categorized("a", "user", "sante", 3))  # a redelivery or a replay
    assert await shown(store, "a") == before == ("sante", "user", 3)
    await apply(store, categorized("a", "user", "sante", 4))  # newer rules: the version moves
    assert await shown(store, "a") == ("sante", "user", 4)
    assert await apply(store, categorized("gone", "user", "sante", 4)) == 0  # not stored, no month
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
    assert await apply(store, *items) == len(ops)  # one entry per operation: the last word
    assert (await doc(store, "p-0"))["category"] == "loisirs"
    assert (await doc(store, "r-119"))["category"] == "transport"
    assert [len(part["ops"]) for part in await parts(store, "q")] == [120]


async def test_one_result_for_many_operations_keeps_the_rules(store: OperationStore) -> None:
    ops = [operation(f"m-{i}") for i in range(40)]
    await store.insert_new(ops)
    await apply(store, categorized("m-3", "manual", "loisirs", 1), categorized("m-4", "user", "sante", 5))
    # a new payee recognises them all (rules version 2): the user's choice and a newer result stay
    await apply(store, *(categorized(f"m-{i}", "user", "alimentation", 2) for i in range(40)))
    assert await shown(store, "m-0") == ("alimentation", "user", 2)
    assert await shown(store, "m-39") == ("alimentation", "user", 2)
    assert await shown(store, "m-3") == ("loisirs", "manual", 1)
    assert await shown(store, "m-4") == ("sante", "user", 5)


async def test_a_batch_is_one_document_per_sheet_and_a_long_sheet_is_folded(store: OperationStore) -> None:
    months = ("2026-09", "2026-10", "2026-11")
    ops = [operation(f"s-{i}", month=months[i % 3]) for i in range(90)]
    await store.insert_new(ops)
    assert (
        await apply(store, *(categorized(o["_id"], "global", "transport", 1, month=o["month"]) for o in ops))
        == 90
    )
    assert sorted((part["sheet"], len(part["ops"])) for part in await parts(store)) == [
        (f"acc:{m}", 30) for m in months
    ]
    page = await store.page(USER, "acc", months=months, date_from=None, date_to=None, after=None, limit=100)
    assert {d["category"] for d in page.items} == {"transport"}
    # one result a batch for s-0 (2026-09): the sheet grows a document a batch, then is folded
    await apply(store, categorized("s-0", "manual", "loisirs", 1, month="2026-09"))
    for version in range(2, 2 + CategorizationSheets.FOLD_AFTER):
        await apply(store, categorized("s-0", "user", f"rule-{version}", version, month="2026-09"))
        await apply(store, categorized("s-3", "user", f"rule-{version}", version, month="2026-09"))
    september = [part for part in await parts(store) if part["sheet"] == "acc:2026-09"]
    assert len(september) <= CategorizationSheets.FOLD_AFTER
    assert await shown(store, "s-0") == ("loisirs", "manual", 1)
    last = 1 + CategorizationSheets.FOLD_AFTER
    assert await shown(store, "s-3") == (f"rule-{last}", "user", last)
    assert await shown(store, "s-6") == ("transport", "global", 1)
    await store.sheets.fold("acc:2026-09")
    september = [part for part in await parts(store) if part["sheet"] == "acc:2026-09"]
    assert len(september) == 1
    assert len(september[0]["ops"]) == 30
    assert (await shown(store, "s-0"), await shown(store, "s-3")) == (
        ("loisirs", "manual", 1),
        (f"rule-{last}", "user", last),
    )
    await store.delete_account("acc")
    assert await parts(store) == []


async def test_an_operation_that_moved_month_is_still_found(store: OperationStore) -> None:
    await store.insert_new([operation("m", month="2026-10")])
    await apply(store, categorized("m", "global", "sante", 1, month="2026-10"))
    # the bank moves its date (pending to booked): results name its new month, or (from before
    # months) none; the app shows the strongest of its sheets' entries
    await store.coll.update_one({"_id": "m"}, {"$set": {"month": "2026-11", "date": "2026-11-02"}})
    assert (await doc(store, "m"))["category"] == "sante"
    await apply(store, categorized("m", "user", "loisirs", 2, month="2026-11"))
    assert await shown(store, "m") == ("loisirs", "user", 2)
    await apply(store, categorized("m", "user", "energie", 3))  # no month: found by id, its filed sheet
    assert await shown(store, "m") == ("energie", "user", 3)
    await apply(store, categorized("m", "manual", "voyages", 3, month="2026-11"))
    await apply(store, categorized("m", "user", "sante", 4))  # the user's choice stays
    assert await shown(store, "m") == ("voyages", "manual", 3)
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
    assert await shown(store, "old") == ("loisirs", "manual", 1)
    assert await shown(store, "old2") == ("sante", "user", 4)
    await apply(store, categorized("old2", "user", "energie", 5))
    assert await shown(store, "old2") == ("energie", "user", 5)


async def test_sheet_documents_written_before_their_entries_were_packed_read_the_same(
    store: OperationStore,
) -> None:
    await store.insert_new([operation("a"), operation("b")])
    at = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    plain = {"category": "transport", "cat_src": "global", "cat_rv": 1, "categorized_at": at}
    await store.sheets.coll.insert_one(
        {"_id": "acc:2026-11:plain", "sheet": "acc:2026-11", "user_id": USER, "account_id": "acc",
         "ops": {"a": plain}}
    )  # fmt: skip
    await apply(store, categorized("b", "global", "energie", 1, month="2026-11"))
    assert [(await doc(store, op))["category"] for op in ("a", "b")] == ["transport", "energie"]
    assert (await doc(store, "a"))["categorized_at"] == at
    await store.sheets.fold("acc:2026-11")
    assert [len(part["ops"]) for part in await parts(store)] == [2]
    assert [(await doc(store, op))["category"] for op in ("a", "b")] == ["transport", "energie"]
