"""Erasing a user (RGPD article 17): which services answer, and when an erasure is done.

The erase id is the user's: asking twice is the same erasure, asked again (every service does its part
again, finding nothing left). An erasure is done when every service holding documents of users answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shared.contract.envelope import deterministic_event_id

# every service that holds documents of a user, and answers an erasure
ERASING_SERVICES = ("entitlements", "connector", "importer", "categorizer")


def erase_id_of(user_id: str) -> str:
    return deterministic_event_id("erasure", user_id)


@dataclass(frozen=True)
class ServiceErased:
    """One service's answer: it removed its documents of the user."""

    erased_at: datetime
    documents_deleted: int


@dataclass(frozen=True)
class Erasure:
    erase_id: str
    user_id: str
    # the first request's date (a later request keeps it, and the answers)
    requested_at: datetime
    answers: Mapping[str, ServiceErased] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, ServiceErased | None]:
        """Each erasing service's answer; None until it has removed its documents of the user."""
        return {name: self.answers.get(name) for name in ERASING_SERVICES}

    @property
    def state(self) -> Literal["in_progress", "done"]:
        return "done" if all(name in self.answers for name in ERASING_SERVICES) else "in_progress"
