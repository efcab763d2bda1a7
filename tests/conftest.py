"""Real engines for the whole session: a private Kafka and FerretDB on free ports (see shared.devstack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devstack import ROOT, Engines, ensure_dir


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    started = Engines.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return ensure_dir(ROOT / ".run" / "test-logs")
