"""Real engines for the whole session: a private Kafka and FerretDB on free ports (see harness.devstack)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness.devstack import ROOT, Engines, ensure_dir
from services.importer.adapters import OperationStore
from shared.mongo import make_client
from tests.kafka_helpers import use_vault


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    started = Engines.start()
    use_vault(started.mongodb_url)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return ensure_dir(ROOT / ".run" / "test-logs")


@pytest.fixture
async def operation_store(engines: Engines) -> AsyncIterator[OperationStore]:
    """The importer's operations collection, with its indexes, in a database of its own (dropped after)."""
    client = make_client(engines.mongodb_url)
    db = client[f"ops_{uuid.uuid4().hex[:8]}"]
    operations = OperationStore(db)
    await operations.create_indexes()
    try:
        yield operations
    finally:
        await client.drop_database(db.name)
        await client.close()
