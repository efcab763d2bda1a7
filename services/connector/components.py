"""What one connector process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from services.connector.adapters.mongo import ConnectorRepository
from services.connector.handlers import ConnectorHandlers


@dataclass(frozen=True)
class ConnectorComponents:
    handlers: ConnectorHandlers
    # the nightly scheduler claims each night here (one replica runs it)
    repository: ConnectorRepository
    nightly_enabled: bool
    # what to close at shutdown (HTTP clients, the lines' producer)
    closers: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=tuple)
