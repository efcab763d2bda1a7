"""The gate's rights: may this user sync now (the projection of banksync.entitlements.v1)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract.payloads import EntitlementChanged


@dataclass(frozen=True)
class Rights:
    """A user's rights as the connector holds them; a newer `version` replaces an older one."""

    allowed: bool
    code: str = ""
    reason: str | None = None
    version: int = 0
    plan: str | None = None

    @classmethod
    def of(cls, change: EntitlementChanged) -> Rights:
        return cls(change.auto_sync_allowed, change.code or "", change.reason, change.version, change.plan)


class EntitlementsUnavailable(Exception):
    """Neither the projection nor the entitlements service could answer."""
