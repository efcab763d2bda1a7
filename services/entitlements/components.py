"""What one entitlements process is made of (built by `app.wire`, reached by the routes)."""

from __future__ import annotations

from dataclasses import dataclass

from services.entitlements.handlers import EntitlementsHandlers, ErasureHandlers


@dataclass(frozen=True)
class EntitlementsComponents:
    handlers: EntitlementsHandlers
    erasures: ErasureHandlers
