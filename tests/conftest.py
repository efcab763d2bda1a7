"""Real engines for the whole session: a private Kafka and FerretDB on free ports (see harness.devstack)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness.devstack import (
    ROOT,
    Engines,
    ServiceProcess,
    Stack,
    categorizer_alone,
    ensure_dir,
    importer_alone,
    pipeline_stack,
)
from services.importer.adapters.mongo import OperationStore
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


# --- what a test module starts for itself, once (a module needing more or other defines its own) ---
def module_database(request: pytest.FixtureRequest) -> str:
    """The module's `DATABASE` (its tests read that database too), else one named after the module."""
    database: str | None = getattr(request.module, "DATABASE", None)
    short = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return database or f"{short}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[Stack]:
    """The whole pipeline (sandbox, entitlements, connector, importer, categorizer) for one test module:
    databases and consumer groups of its own, logs in a folder of its own."""
    database = module_database(request)
    with pipeline_stack(engines, ensure_dir(log_dir / database), database) as running:
        yield running


@pytest.fixture(scope="module")
def importer(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[ServiceProcess]:
    """The importer alone for one test module, on a fresh database (the module's `DATABASE`) and consumer
    groups of its own: the tests publish what the connector would, and read what the importer says."""
    database = module_database(request)
    with importer_alone(engines, log_dir, database, database.replace("_", "-")) as proc:
        yield proc


@pytest.fixture(scope="module")
def categorizer(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[ServiceProcess]:
    """The categorizer alone for one test module, on a fresh database and a consumer group of its own."""
    short = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with categorizer_alone(engines, log_dir, f"categorizer_{short}") as proc:
        yield proc


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
