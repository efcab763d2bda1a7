"""What one connector process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from dataclasses import dataclass

from services.connector.handlers import ConnectorHandlers


@dataclass(frozen=True)
class ConnectorComponents:
    handlers: ConnectorHandlers
    nightly_enabled: bool
