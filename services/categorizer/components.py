"""What one categorizer process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from dataclasses import dataclass

from services.categorizer.handlers import CategorizerHandlers
from shared.batch_publisher import BatchPublisher


@dataclass(frozen=True)
class CategorizerComponents:
    handlers: CategorizerHandlers
    publisher: BatchPublisher
