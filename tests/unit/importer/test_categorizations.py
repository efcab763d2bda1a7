"""Storing categorisations on operations: the guard, checked on the document read by `_id`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import DeleteOne, UpdateOne

from services.importer.adapters import CATEGORIZATION_DEFAULTS
from services.importer.handlers import Categorizations, KeyLocks
from shared.schemas import OperationCategorized

USER = "user-1"


class FakeOperations:
    """The two calls Categorizations makes, on dicts; records every write's filter."""

    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self.docs = {doc["_id"]: dict(doc) for doc in docs}
        self.filters: list[dict[str, Any]] = []

    async def get_many(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {i: dict(self.docs[i]) for i in dict.fromkeys(ids) if i in self.docs}

    async def write(self, requests: Sequence[UpdateOne | DeleteOne]) -> None:
        for request in requests:
            assert isinstance(request, UpdateOne)
            self.filters.append(request._filter)
            doc = self.docs.get(request._filter["_id"])
            if doc is not None:
                doc.update(request._doc["$set"])


def operation(op_id: str, user: str = USER) -> dict[str, Any]:
    return {"_id": op_id, "user_id": user, "account_id": "acc", **CATEGORIZATION_DEFAULTS}


def categorized(op_id: str, source: str | None, category: str | None, version: int) -> OperationCategorized:
    return OperationCategorized(
        user_id=USER,
        account_id="acc",
        operation_id=op_id,
        payee={"id": f"payee-{category}", "name": str(category)} if category else None,
        category=category,
        source=source,
        keyword="KW" if source in ("user", "global") else None,
        rules_version=version,
    )


async def apply(store: FakeOperations, *items: OperationCategorized) -> None:
    await Categorizations(store, KeyLocks()).apply(list(items))  # type: ignore[arg-type]


async def test_writes_name_the_operation_by_id_only():
    store = FakeOperations([operation("a"), operation("b")])
    await apply(store, categorized("a", "global", "alimentation", 0), categorized("b", None, None, 0))
    assert store.filters == [{"_id": "a"}, {"_id": "b"}]
    assert store.docs["a"]["category"] == "alimentation"
    assert store.docs["a"]["categorized_by"] == {
        "source": "global",
        "payee_id": "payee-alimentation",
        "keyword": "KW",
    }
    assert (store.docs["b"]["cat_rv"], store.docs["b"]["category"]) == (0, None)


async def test_the_users_choice_wins_and_an_older_rule_set_comes_too_late():
    store = FakeOperations([operation("a"), operation("b")])
    await apply(
        store,
        categorized("a", "global", "alimentation", 1),
        categorized("a", "manual", "loisirs", 1),
        categorized("a", "user", "shopping", 2),  # a rule result never replaces the user's choice
        categorized("b", "user", "energie", 2),
        categorized("b", "global", "divers", 1),  # an older rule set's result comes late
    )
    assert (store.docs["a"]["category"], store.docs["a"]["cat_src"]) == ("loisirs", "manual")
    assert (store.docs["b"]["category"], store.docs["b"]["cat_rv"]) == ("energie", 2)
    await apply(store, categorized("a", "manual", "shopping", 2))  # the user changes their mind
    assert store.docs["a"]["category"] == "shopping"


async def test_another_users_operation_and_exact_repeats_are_not_written():
    store = FakeOperations([operation("a"), operation("x", user="someone-else")])
    await apply(store, categorized("a", "user", "sante", 3), categorized("x", "user", "sante", 3))
    assert store.filters == [{"_id": "a"}]
    assert store.docs["x"]["category"] is None
    await apply(store, categorized("a", "user", "sante", 3))  # a redelivery or a replay
    assert store.filters == [{"_id": "a"}]
    await apply(store, categorized("a", "user", "sante", 4))  # same result, newer rules: the version moves
    assert store.filters == [{"_id": "a"}, {"_id": "a"}]
    assert store.docs["a"]["cat_rv"] == 4
