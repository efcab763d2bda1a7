"""The one-off rewrite that gives operations stored before search keys their `words`, on FerretDB."""

from __future__ import annotations

import pytest

from services.importer.adapters.mongo import OperationStore
from services.importer.domain.operations import OperationQuery
from shared.text import search_keys, words_of

pytestmark = pytest.mark.engines


def stored_before(n: int) -> dict[str, object]:
    return {
        "_id": f"old-{n}",
        "user_id": "u-old",
        "account_id": "acc-old",
        "date": f"2025-01-{n + 1:02d}",
        "month": "2025-01",
        "amount": "-10.00",
        "cents": -1000,
        "memo": "PRLV SEPA ÉLECTRICITÉ DE FRANCE" if n % 2 else "CB BOULANGERIE",
        "label": "",
        "status": "booked",
        "source": "bank",
    }


async def test_older_operations_get_their_search_keys_once_and_are_found(operation_store: OperationStore):
    await operation_store.coll.insert_many([stored_before(n) for n in range(6)])
    assert await operation_store.add_search_keys() == 6
    doc = await operation_store.coll.find_one({"_id": "old-1"})
    assert doc is not None
    assert doc["words"] == search_keys("PRLV SEPA ÉLECTRICITÉ DE FRANCE", "")
    # done once: a marker says so, the collection is not read again
    await operation_store.coll.insert_one({**stored_before(9), "_id": "later-without-words"})
    assert await operation_store.add_search_keys() == 0

    page = await operation_store.search(
        "u-old",
        [{"_id": "acc-old", "months": ["2025-01"]}],
        OperationQuery(words=tuple(words_of("électric"))),
        date_from=None,
        date_to=None,
        after=None,
        limit=10,
    )
    assert [d["_id"] for d in page.items] == ["old-5", "old-3", "old-1"]
