"""The connector's rules, without I/O: what a failure means, what changed, when to sync, how to back off."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from shared.jsonutil import dumps_canonical


class SyncState(StrEnum):
    """The state behind the operations page's icon."""

    OK = "ok"
    SYNCING = "syncing"
    ERROR = "error"
    ACTION_NEEDED = "action_needed"
    PAUSED = "paused"


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    retryable: bool

    @property
    def state(self) -> SyncState:
        return SyncState.ERROR if self.retryable else SyncState.ACTION_NEEDED


# Powens connection states that need the user: no retry until they act in the webview.
_STRONG_AUTH = "Votre banque demande une authentification forte : reconnectez-vous pour valider l'accès."
_ACTION_NEEDED: dict[str, str] = {
    "wrongpass": "Identifiants refusés par la banque : mettez à jour votre mot de passe de connexion.",
    "SCARequired": _STRONG_AUTH,
    "webauthRequired": _STRONG_AUTH,
    "decoupled": "Validez la connexion dans l'application de votre banque, puis relancez la synchro.",
    "actionNeeded": "Votre banque demande une action sur son site (conditions à accepter, message à lire).",
    "additionalInformationNeeded": "Votre banque demande une information complémentaire : reconnectez-vous.",
    "passwordExpired": "Mot de passe bancaire expiré : changez-le sur le site de la banque, puis ici.",
}
# Passing troubles: retried with backoff, then reported as an error; the next sync tries again.
_RETRYABLE: dict[str, str] = {
    "websiteUnavailable": "Le site de votre banque est indisponible ; nous réessaierons automatiquement.",
    "rateLimiting": "La banque limite les connexions ; nous réessaierons automatiquement.",
    "tooManySync": "Trop de synchronisations récentes ; nous réessaierons plus tard.",
    "bug": "Erreur chez l'agrégateur bancaire ; nous réessaierons automatiquement.",
    "aggregator_unavailable": "L'agrégateur bancaire ne répond pas ; nous réessaierons automatiquement.",
    "validating": "La connexion est en cours de validation ; nous réessaierons automatiquement.",
}


def classify_connection_error(error: str) -> Failure:
    if error in _ACTION_NEEDED:
        return Failure(error, _ACTION_NEEDED[error], retryable=False)
    if error in _RETRYABLE:
        return Failure(error, _RETRYABLE[error], retryable=True)
    # unknown states: say so, and try again later rather than block the user forever
    return Failure(error, f"Erreur de la connexion bancaire ({error}) ; nous réessaierons.", retryable=True)


def classify_http_status(status: int) -> Failure:
    if status == 429:
        return classify_connection_error("rateLimiting")
    if status >= 500:
        return Failure("aggregator_unavailable", _RETRYABLE["aggregator_unavailable"], retryable=True)
    return Failure("bug", f"Réponse inattendue de l'agrégateur (HTTP {status}).", retryable=False)


# Fields whose change means the bank says something new about a line; `last_update` and scrape
# dates are bookkeeping and do not make a line new.
FINGERPRINT_FIELDS = (
    "id",
    "id_account",
    "date",
    "rdate",
    "vdate",
    "value",
    "original_wording",
    "simplified_wording",
    "wording",
    "type",
    "coming",
    "active",
    "deleted",
)


def fingerprint(transaction: Mapping[str, Any]) -> str:
    """Same line, same version, same fingerprint: the basis of change detection and event ids."""
    relevant = {field: transaction.get(field) for field in FINGERPRINT_FIELDS}
    return hashlib.sha256(dumps_canonical(relevant)).hexdigest()[:24]


def changed_lines(
    transactions: Sequence[Mapping[str, Any]], known: Mapping[str, str]
) -> list[tuple[Mapping[str, Any], str]]:
    """The lines that are new or different from what was published before, with their fingerprints."""
    out: list[tuple[Mapping[str, Any], str]] = []
    for transaction in transactions:
        print_ = fingerprint(transaction)
        if known.get(str(transaction["id"])) != print_:
            out.append((transaction, print_))
    return out


@dataclass(frozen=True)
class FetchWindow:
    """What to ask the aggregator: everything on a first sync, changes since the cursor afterwards."""

    initial: bool
    last_update: datetime | None

    def params(self) -> dict[str, str]:
        if self.last_update is None:
            return {}
        return {"last_update": self.last_update.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")}


def fetch_window(cursor: datetime | None, overlap: timedelta) -> FetchWindow:
    """The cursor is the start of the last good sync; the overlap absorbs clock skew and late writes."""
    if cursor is None:
        return FetchWindow(initial=True, last_update=None)
    return FetchWindow(initial=False, last_update=cursor - overlap)


def backoff_delays(
    attempts: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> Iterator[float]:
    """Exponential backoff with full jitter (AWS style): uniform in [0, min(cap, base * 2^n)]."""
    draw = rng or random.Random()
    for attempt in range(attempts):
        yield draw.uniform(0, min(cap_s, base_s * 2**attempt))


@dataclass(frozen=True)
class NightlyWindow:
    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, window: str, zone: str) -> NightlyWindow:
        """`"02:00-04:00"` in `Europe/Paris`."""
        try:
            first, last = (time.fromisoformat(part.strip()) for part in window.split("-"))
        except ValueError as exc:
            raise ValueError(f"nightly window must look like 02:00-04:00, not {window!r}") from exc
        if last <= first:
            raise ValueError(f"nightly window must end after it starts: {window!r}")
        return cls(first, last, ZoneInfo(zone))

    def next_start(self, now: datetime) -> datetime:
        """The next window start after `now` (aware), in UTC; DST-safe via the zone."""
        local = now.astimezone(self.zone)
        candidate_day: date = local.date()
        for _ in range(3):
            candidate = datetime.combine(candidate_day, self.start, tzinfo=self.zone)
            if candidate > local:
                return candidate.astimezone(UTC)
            candidate_day += timedelta(days=1)
        raise AssertionError("unreachable: a later day always starts after now")

    def span(self) -> timedelta:
        today = date(2000, 1, 3)
        return datetime.combine(today, self.end) - datetime.combine(today, self.start)

    def run_key(self, now: datetime) -> str:
        """The local date of the night a run belongs to: one run per night across all replicas."""
        return now.astimezone(self.zone).date().isoformat()


def spread_offset(user_id: str, span: timedelta) -> timedelta:
    """A stable place for each user inside the window, so the aggregator is not hit all at once."""
    digest = int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16)
    return timedelta(seconds=digest % max(1, int(span.total_seconds())))
