"""Storing categorisations on operations, on the real engine: the guard lives in each write's filter."""

from __future__ import annotations

from typing import Any

import pytest

from services.importer.adapters import CATEGORIZATION_DEFAULTS, OperationStore
from services.importer.handlers import Categorizations, KeyLocks
from shared.schemas import OperationCategorized

USER = "user-1"


@pytest.fixture
def store(operation_store: OperationStore) -> OperationStore:
    return operation_store


def operation(op_id: str, user: str = USER) -> dict[str, Any]:
    return {"_id": op_id, "user_id": user, "account_id": "acc", "memo": "CB", **CATEGORIZATION_DEFAULTS}


def categorized(
    op_id: str, source: str | None, category: str | None, version: int, account: str = "acc"
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
    )


async def apply(store: OperationStore, *items: OperationCategorized) -> int:
    return await Categorizations(store, KeyLocks()).apply(list(items))


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
    assert await apply(store, categorized("a", "user", "sante", 3), categorized("x", "user", "sante", 3)) == 1
    assert (await doc(store, "x"))["category"] is None
    first = (await doc(store, "a"))["categorized_at"]
    assert await apply(store, categorized("a", "user", "sante", 3)) == 0  # a redelivery or a replay
    assert (await doc(store, "a"))["categorized_at"] == first
    assert await apply(store, categorized("a", "user", "sante", 4)) == 1  # newer rules: the version moves
    assert (await doc(store, "a"))["cat_rv"] == 4
    assert await apply(store, categorized("gone", "user", "sante", 4)) == 0  # no such operation: no upsert
    assert await store.get("gone") is None


async def test_accounts_are_written_side_by_side_each_in_order(store: OperationStore) -> None:
    ops = [{**operation(f"{acc}-{i}"), "account_id": acc} for acc in ("p", "q", "r") for i in range(120)]
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
    assert await apply(store, *items) == 38
    assert (await doc(store, "m-0"))["category"] == "alimentation"
    assert (await doc(store, "m-39"))["cat_rv"] == 2
    assert ((await doc(store, "m-3"))["category"], (await doc(store, "m-3"))["cat_src"]) == (
        "loisirs",
        "manual",
    )
    assert (await doc(store, "m-4"))["category"] == "sante"
    assert (await doc(store, "other-user"))["category"] is None
    assert await apply(store, *items) == 0  # redelivered: nothing to write
