"""What one importer process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.importer.handlers import AccountService, Importer

if TYPE_CHECKING:
    from services.importer.api import Replays


@dataclass(frozen=True)
class ImporterComponents:
    importer: Importer
    accounts: AccountService
    replays: Replays
