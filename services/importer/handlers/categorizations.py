"""Filing the categorizer's payee and category of operations (banksync.categorizations.v1)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from services.importer.domain.categorizations import last_word_per_operation, sheet_id
from services.importer.ports import CategorizationFiling
from shared.contract.payloads import OperationCategorized


class Categorizations:
    """Stores the categorizer's payee and category of operations in the account's month sheets; never
    over the user's own choice.

    Per batch: the last word per operation (`last_word_per_operation`), then one insert per sheet the
    results name (the event's account and month; an older event without a month finds its operation
    by id). Nothing is read or rewritten: that is a handful of inserts for thousands of results, where
    one guarded update per operation wrote a few hundred a second on the local engine. What the app
    reads takes the strongest of an operation's own categorisation and its sheets' entries (the user's
    choice over any rule result, then the newer rule set, then the later), so the rule holds however
    the results arrive, twice or out of order. Nothing here writes the operations themselves: the
    intake and this write-back never race on one operation.
    """

    def __init__(self, sheets: CategorizationFiling) -> None:
        self.sheets = sheets

    async def apply(self, items: Sequence[OperationCategorized]) -> int:
        """Returns how many operations' categorisations were filed."""
        winners = last_word_per_operation(items)
        filed = await self._sheets_named(winners)
        return await self.sheets.file(winners, filed, dt.datetime.now(dt.UTC))

    async def _sheets_named(self, items: Sequence[OperationCategorized]) -> dict[str, str]:
        """Operation id → the sheet its result goes to; one not stored (without a month) has none."""
        named = {i.operation_id: sheet_id(i.account_id, i.month) for i in items if i.month is not None}
        unnamed: dict[tuple[str, str], list[str]] = {}
        for item in items:
            if item.month is None:
                unnamed.setdefault((item.user_id, item.account_id), []).append(item.operation_id)
        for (user_id, account_id), ids in unnamed.items():
            named.update(await self.sheets.filed_in(user_id, account_id, ids))
        return named
