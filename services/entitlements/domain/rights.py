"""Plans, options and the sync right.

Budgetfacile's rule: Premium includes automatic bank sync; Standard needs the paid Auto-Import option.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Plan(StrEnum):
    STANDARD = "standard"
    PREMIUM = "premium"


class Option(StrEnum):
    AUTO_IMPORT = "auto_import"


@dataclass(frozen=True)
class Decision:
    """Whether automatic sync is allowed, with a stable English code and a French reason for people."""

    allowed: bool
    code: str
    reason: str | None


@dataclass(frozen=True)
class Entitlements:
    user_id: str
    plan: Plan = Plan.STANDARD
    options: frozenset[Option] = frozenset()
    version: int = 0

    @classmethod
    def unknown_user(cls, user_id: str) -> Entitlements:
        """A user never seen is Standard with no options."""
        return cls(user_id)

    @property
    def option_names(self) -> list[str]:
        """The options, sorted: as they are stored, shown and announced."""
        return sorted(o.value for o in self.options)


def decide(entitlements: Entitlements) -> Decision:
    if entitlements.plan is Plan.PREMIUM:
        return Decision(True, "premium", "La synchronisation bancaire automatique est incluse dans Premium.")
    if Option.AUTO_IMPORT in entitlements.options:
        return Decision(True, "auto_import_option", "Option Auto-Import active.")
    return Decision(
        False,
        "auto_import_required",
        "Votre abonnement Standard n'inclut pas la synchronisation bancaire automatique : "
        "souscrivez à l'option Auto-Import dans Paramètres > Abonnement avant d'activer la synchro.",
    )
