"""What one importer process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from dataclasses import dataclass

from services.importer.handlers.accounts import AccountService
from services.importer.handlers.intake import Importer
from services.importer.replay import Replays


@dataclass(frozen=True)
class ImporterComponents:
    importer: Importer
    accounts: AccountService
    replays: Replays
