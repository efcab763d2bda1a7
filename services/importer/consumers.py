"""The importer's consumer entry points: TopicConsumer batches handed to the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRecord

from services.importer.domain.intake import raw_record
from services.importer.handlers.categorizations import Categorizations
from services.importer.handlers.details import AccountDetails
from services.importer.handlers.intake import Importer
from services.importer.replay import ReplayRunner, request_problem
from shared.consumer import Incoming, PoisonRecord
from shared.contract.payloads import AccountDiscovered, OperationCategorized, ReplayRequested

DeadLetter = Callable[[ConsumerRecord[bytes, bytes], str, str], Awaitable[None]]


class RawConsumerHandler:
    """Adapts TopicConsumer batches of the raw topic to the import path: `transaction.observed` and
    `account.synced` are imported; a `replay.requested` is run where it lies, after the records before it
    and before those after it (see services.importer.replay), by this replica, the partition's owner."""

    def __init__(self, importer: Importer, replays: ReplayRunner) -> None:
        self.importer = importer
        self.replays = replays
        self.dead_letter: DeadLetter | None = None

    async def __call__(self, batch: list[Incoming]) -> None:
        rejected: list[tuple[Incoming, str]] = []
        lines: list[Incoming] = []
        for incoming in batch:
            if not isinstance(incoming.data, ReplayRequested):
                lines.append(incoming)
                continue
            rejected += await self._import(lines)
            lines = []
            problem = request_problem(incoming.data, incoming.event.userid, incoming.key)
            if problem is not None:
                rejected.append((incoming, problem))
                continue
            await self.replays.run(incoming.data, incoming.partition, incoming.offset)
        rejected += await self._import(lines)
        if not rejected:
            return
        if len(batch) == 1:
            raise PoisonRecord(rejected[0][1])
        assert self.dead_letter is not None
        for incoming, reason in rejected:
            await self.dead_letter(incoming.record, f"rejected: {reason}", "rejected")

    async def _import(self, batch: list[Incoming]) -> list[tuple[Incoming, str]]:
        if not batch:
            return []
        records = [raw_record(i.event, i.data, i.key) for i in batch]
        # where each came from, for the DLQ (a rejected record is handed back as it was read)
        origins = {id(raw): incoming for raw, incoming in zip(records, batch, strict=True)}
        result = await self.importer.import_records(records)
        return [(origins[id(raw)], reason) for raw, reason in result.rejected]


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
