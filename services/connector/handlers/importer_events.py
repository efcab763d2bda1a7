"""What the importer says of the app accounts: deleted (the bank account is imported again, whole, at its
next sync) or balance checked (kept for the sync status)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from services.connector.domain.states import importer_notes
from services.connector.handlers.common import log
from services.connector.ports import ConnectorStore
from shared.contract.payloads import AccountBalanceChecked, AccountDeleted


class ImporterEvents:
    def __init__(self, store: ConnectorStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    async def on_importer_events(
        self, items: Sequence[tuple[str, AccountDeleted | AccountBalanceChecked]]
    ) -> None:
        """In one write for the batch. Items are (event id, data), in topic order."""
        for _, item in items:
            if isinstance(item, AccountDeleted) and item.aggregator_account_id:
                log.info(
                    "reimport_marked",
                    user_id=item.user_id,
                    aggregator_account_id=item.aggregator_account_id,
                    account_id=item.account_id,
                )
        notes = importer_notes(items, self.clock())
        if notes:
            await self.store.note_importer_facts(notes)
