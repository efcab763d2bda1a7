"""Plans, options and the sync right: pure rules, no I/O.

Budgetfacile's rule: Premium includes automatic bank sync; Standard needs the paid Auto-Import option.
Commands return the new state and the change, or no change when they would change nothing, which
makes them idempotent (subscribing twice is one subscription).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Plan(StrEnum):
    STANDARD = "standard"
    PREMIUM = "premium"


class Option(StrEnum):
    AUTO_IMPORT = "auto_import"


class Action(StrEnum):
    PLAN_CHANGED = "plan_changed"
    OPTION_SUBSCRIBED = "option_subscribed"
    OPTION_CANCELLED = "option_cancelled"


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


@dataclass(frozen=True)
class Change:
    action: Action
    before: Entitlements
    after: Entitlements
    plan: Plan | None = None
    option: Option | None = None


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


def change_plan(current: Entitlements, plan: Plan) -> Change | None:
    if current.plan is plan:
        return None
    after = replace(current, plan=plan, version=current.version + 1)
    return Change(Action.PLAN_CHANGED, current, after, plan=plan)


class OptionIncludedInPlan(Exception):
    """Premium already includes Auto-Import: subscribing would charge for nothing."""


def subscribe(current: Entitlements, option: Option) -> Change | None:
    if option in current.options:
        return None
    if current.plan is Plan.PREMIUM and option is Option.AUTO_IMPORT:
        raise OptionIncludedInPlan(option)
    after = replace(current, options=current.options | {option}, version=current.version + 1)
    return Change(Action.OPTION_SUBSCRIBED, current, after, option=option)


def cancel(current: Entitlements, option: Option) -> Change | None:
    if option not in current.options:
        return None
    after = replace(current, options=current.options - {option}, version=current.version + 1)
    return Change(Action.OPTION_CANCELLED, current, after, option=option)
