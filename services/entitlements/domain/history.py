"""A change as it is recorded: who made it, when, at whose request; the history line and the event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from services.entitlements.domain.commands import Action, Change
from services.entitlements.domain.rights import Entitlements, Option, Plan


@dataclass(frozen=True)
class Actor:
    """Who made a change: the token's subject and its scope (the billing backend, an operator)."""

    sub: str
    scope: str

    @classmethod
    def of(cls, claims: Mapping[str, str]) -> Actor:
        return cls(sub=claims["sub"], scope=claims["scope"])

    def as_dict(self) -> dict[str, str]:
        return {"sub": self.sub, "scope": self.scope}


@dataclass(frozen=True)
class ChangeRecord:
    """One change: the outbox entry until it is announced, then a line of the user's history."""

    after: Entitlements
    action: Action
    at: datetime
    request_id: str
    # absent on entries older than the billing scope
    actor: Actor | None = None
    # what the command named: the plan changed to, or the option subscribed or cancelled
    plan: Plan | None = None
    option: Option | None = None

    @classmethod
    def of(cls, change: Change, *, at: datetime, request_id: str, actor: Actor) -> ChangeRecord:
        return cls(
            after=change.after,
            action=change.action,
            at=at,
            request_id=request_id,
            actor=actor,
            plan=change.plan,
            option=change.option,
        )

    @property
    def user_id(self) -> str:
        return self.after.user_id

    @property
    def version(self) -> int:
        return self.after.version

    @property
    def detail(self) -> dict[str, str]:
        """What the command named, by name: `{"plan": "premium"}` or `{"option": "auto_import"}`."""
        named = (("plan", self.plan), ("option", self.option))
        return {name: value.value for name, value in named if value is not None}
