"""Sheets: many small per-item records kept as a few large documents, written append-only.

The local engine (FerretDB v1) pays per document, on reads as on writes, and applies an update by
reading the document and writing it back. A store of thousands of small records per account (the
importer's categorisations, the categorizer's projection) is cheaper kept in "sheets": one per
account and month (or any grouping the caller names), each a few documents of entries (item id →
entry). A batch adds one document to every sheet it touches (`append`: one `insert_many`, nothing read,
nothing rewritten); past FOLD_AFTER documents this writer added, a sheet is folded into one (`fold`).
Reading a sheet merges its documents' entries item by item with the store's own rule (`merge`), so an
entry written twice (a redelivery, a replay) only costs its bytes until the next fold.

The count of documents added is the process's own (a counter written per sheet and batch cost as much
as the entries): a new owner of a partition folds after its own FOLD_AFTER, which merges what its
predecessors left too. Nothing is overwritten, and a fold inserts the merged document before it
deletes exactly the documents it read: a writer that lost its partition cannot undo its successor's
work, and a crash in between leaves entries twice, never none.

A sheet document: `{_id: <sheet>:<uuid>, sheet, user_id, account_id, ops}`, `ops` being its entries
(item id → entry) as one compressed BSON value (`packed`). The engine's cost is per value it decodes
(FerretDB v1 turns each stored JSON value, and its type schema, back into BSON): 20,000 entries of ten
fields each read at about 6,000 a second as plain subdocuments, as one value per document they are a
few megabytes copied. Documents written before the packing (a plain `{item id: entry}`) read the same.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DeleteOne
from pymongo.asynchronous.collection import AsyncCollection

from shared.bulk import bulk_write_chunked
from shared.mongo import POINT_READS_UP_TO

Doc = dict[str, Any]
# as shared.mongo.make_client decodes what the engine sends
CODEC: CodecOptions[Doc] = CodecOptions(document_class=dict, tz_aware=True, tzinfo=UTC)


def packed(entries: dict[str, Doc]) -> bytes:
    """A sheet document's entries as one value (BSON, compressed)."""
    return zlib.compress(bson.encode(entries), 1)


def unpacked(part: Doc) -> Doc:
    """A sheet document as read, its `ops` turned back into entries (item id → entry)."""
    ops = part.get("ops")
    if isinstance(ops, bytes):
        part["ops"] = bson.decode(zlib.decompress(ops), codec_options=CODEC)
    elif ops is None:
        part["ops"] = {}
    return part


@dataclass(frozen=True)
class SheetAddition:
    """Entries (item id → entry) a batch adds to one sheet."""

    sheet_id: str
    user_id: str
    account_id: str
    entries: dict[str, Doc]


class Additions:
    """A batch's entries gathered by the sheet (and owner) they go to: one SheetAddition each."""

    def __init__(self) -> None:
        self._by_sheet: dict[tuple[str, str], SheetAddition] = {}

    def entries(self, sheet_id: str, user_id: str, account_id: str) -> dict[str, Doc]:
        """The entries (item id → entry) this batch adds to a sheet, to fill in."""
        addition = self._by_sheet.get((sheet_id, user_id))
        if addition is None:
            addition = self._by_sheet[(sheet_id, user_id)] = SheetAddition(sheet_id, user_id, account_id, {})
        return addition.entries

    def all(self) -> list[SheetAddition]:
        return list(self._by_sheet.values())


def entries_by_item(parts: Iterable[Doc]) -> dict[str, list[Doc]]:
    """Item id → its entries in the (unpacked) documents `parts`, in the order the documents come."""
    found: dict[str, list[Doc]] = {}
    for part in parts:
        for item_id, entry in part["ops"].items():
            found.setdefault(item_id, []).append(entry)
    return found


class Sheets(ABC):
    """One collection of sheets; `merge` is the store's rule (see the module's docstring)."""

    FOLD_AFTER = 8
    REMEMBERED_SHEETS = 50_000
    # single-field indexes besides `sheet` (name, field)
    INDEXES: tuple[tuple[str, str], ...] = ()

    def __init__(self, coll: AsyncCollection[Doc]) -> None:
        self.coll = coll
        # sheet → documents this process added since its last fold (the least recent forgotten)
        self._added: OrderedDict[str, int] = OrderedDict()

    @abstractmethod
    def merge(self, entries: list[Doc]) -> Doc | None:
        """What an item's entries (in the order their documents came) leave; None: nothing."""

    async def create_indexes(self) -> None:
        await self.coll.create_index([("sheet", ASCENDING)], name="by_sheet")
        for name, field in self.INDEXES:
            await self.coll.create_index([(field, ASCENDING)], name=name)

    async def find(self, query: Doc) -> list[Doc]:
        """The sheet documents `query` finds (its fields are the caller's to index), entries unpacked."""
        return [unpacked(part) for part in await self.coll.find(query).to_list()]

    async def read(self, sheet_ids: Iterable[str]) -> dict[str, list[Doc]]:
        """Each sheet's documents (one indexed read per sheet, a few at a time); absent ones are left out."""
        wanted = sorted(set(sheet_ids))
        found: dict[str, list[Doc]] = {}
        for start in range(0, len(wanted), POINT_READS_UP_TO):
            chunk = wanted[start : start + POINT_READS_UP_TO]
            parts = await asyncio.gather(*(self.find({"sheet": sid}) for sid in chunk))
            found.update((sid, docs) for sid, docs in zip(chunk, parts, strict=True) if docs)
        return found

    async def append(self, additions: Sequence[SheetAddition]) -> None:
        """One document per sheet with the batch's entries; then folds the sheets that grew too long."""
        additions = [a for a in additions if a.entries]
        if not additions:
            return
        await self.coll.insert_many(
            [
                {
                    "_id": f"{a.sheet_id}:{uuid.uuid4().hex}",
                    "sheet": a.sheet_id,
                    "user_id": a.user_id,
                    "account_id": a.account_id,
                    "ops": packed(a.entries),
                }
                for a in additions
            ],
            ordered=False,
        )
        for addition in additions:
            added = self._added.pop(addition.sheet_id, 0) + 1
            self._added[addition.sheet_id] = added
            if added >= self.FOLD_AFTER:
                await self.fold(addition.sheet_id)
        while len(self._added) > self.REMEMBERED_SHEETS:
            self._added.popitem(last=False)

    async def fold(self, sheet: str) -> None:
        """Replaces a sheet's documents by one per user with what `merge` leaves of each item."""
        parts = await self.find({"sheet": sheet})
        by_user: dict[str, list[Doc]] = {}
        for part in parts:
            by_user.setdefault(str(part.get("user_id")), []).append(part)
        folded: list[Doc] = []
        for user_id, own in by_user.items():
            merged = {item: self.merge(found) for item, found in entries_by_item(own).items()}
            folded.append(
                {
                    "_id": f"{sheet}:{uuid.uuid4().hex}",
                    "sheet": sheet,
                    "user_id": user_id,
                    "account_id": own[0].get("account_id"),
                    "ops": {item: entry for item, entry in merged.items() if entry is not None},
                }
            )
        kept = [{**doc, "ops": packed(doc["ops"])} for doc in folded if doc["ops"]]
        if len(parts) > len(kept):
            # the merged document first: a crash in between leaves entries twice, never none
            if kept:
                await self.coll.insert_many(kept, ordered=False)
            await bulk_write_chunked(self.coll, [DeleteOne({"_id": part["_id"]}) for part in parts])
        self._added.pop(sheet, None)
