"""The importer's consumer entry points: TopicConsumer batches handed to the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRecord

from services.importer.domain.intake import raw_record
from services.importer.handlers.categorizations import Categorizations
from services.importer.handlers.details import AccountDetails
from services.importer.handlers.intake import Importer
from shared.consumer import Incoming, PoisonRecord
from shared.contract.payloads import AccountDiscovered, OperationCategorized

DeadLetter = Callable[[ConsumerRecord[bytes, bytes], str, str], Awaitable[None]]


class RawConsumerHandler:
    """Adapts TopicConsumer batches of `transaction.observed` and `account.synced` to the import path."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.dead_letter: DeadLetter | None = None

    async def __call__(self, batch: list[Incoming]) -> None:
        records = [raw_record(i.event, i.data, i.key) for i in batch]
        # where each came from, for the DLQ (a rejected record is handed back as it was read)
        origins = {id(raw): incoming.record for raw, incoming in zip(records, batch, strict=True)}
        result = await self.importer.import_records(records)
        if not result.rejected:
            return
        if len(batch) == 1:
            raise PoisonRecord(result.rejected[0][1])
        assert self.dead_letter is not None
        for raw, reason in result.rejected:
            origin = origins[id(raw)]
            assert origin is not None
            await self.dead_letter(origin, f"rejected: {reason}", "rejected")


class DiscoveredConsumerHandler:
    def __init__(self, details: AccountDetails) -> None:
        self.details = details

    async def __call__(self, batch: list[Incoming]) -> None:
        await self.details.apply([i.data for i in batch if isinstance(i.data, AccountDiscovered)])


class CategorizedConsumerHandler:
    def __init__(self, categorizations: Categorizations) -> None:
        self.categorizations = categorizations

    async def __call__(self, batch: list[Incoming]) -> None:
        items = [i.data for i in batch if isinstance(i.data, OperationCategorized)]
        await self.categorizations.apply(items)
