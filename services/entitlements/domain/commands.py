"""What changes a user's rights: a plan change, subscribing to and cancelling an option.

Commands return the new state and the change, or no change when they would change nothing, which
makes them idempotent (subscribing twice is one subscription). Each change is the next version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from services.entitlements.domain.rights import Entitlements, Option, Plan


class Action(StrEnum):
    PLAN_CHANGED = "plan_changed"
    OPTION_SUBSCRIBED = "option_subscribed"
    OPTION_CANCELLED = "option_cancelled"


@dataclass(frozen=True)
class Change:
    action: Action
    before: Entitlements
    after: Entitlements
    plan: Plan | None = None
    option: Option | None = None


# a command over the current state (what the handlers run under optimistic concurrency)
Command = Callable[[Entitlements], Change | None]


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
