"""The connector's rules, without I/O: what a failure means, what changed, when to sync, how to back off."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from shared.jsonutil import dumps_canonical
from shared.money import InvalidAmount, format_amount, to_amount


class SyncState(StrEnum):
    """The state behind the operations page's icon."""

    NEVER_SYNCED = "never_synced"
    OK = "ok"
    SYNCING = "syncing"
    ERROR = "error"
    ACTION_NEEDED = "action_needed"
    PAUSED = "paused"
    CLOSED = "closed"


class UserAction(StrEnum):
    """What the user can do about an account's state (the button beside the status)."""

    NONE = "none"
    SYNC = "sync"
    WAIT = "wait"
    RECONNECT = "reconnect"
    SUBSCRIBE = "subscribe"


# what each state tells the user, when the failure itself says nothing more precise
STATE_GUIDANCE: dict[SyncState, tuple[UserAction, str]] = {
    SyncState.NEVER_SYNCED: (
        UserAction.SYNC,
        "Ce compte n'a pas encore été synchronisé : lancez une synchronisation ou attendez celle de la nuit.",
    ),
    SyncState.OK: (UserAction.NONE, "Compte à jour."),
    SyncState.SYNCING: (UserAction.WAIT, "Synchronisation en cours : vos opérations arrivent."),
    SyncState.ERROR: (
        UserAction.WAIT,
        "La dernière synchronisation a échoué ; nous réessaierons automatiquement.",
    ),
    SyncState.ACTION_NEEDED: (
        UserAction.RECONNECT,
        "Votre banque a besoin de vous : reconnectez-la avec le bouton « Reconnecter ».",
    ),
    SyncState.PAUSED: (
        UserAction.SUBSCRIBE,
        "Synchronisation suspendue : l'import automatique n'est pas inclus dans votre formule.",
    ),
    SyncState.CLOSED: (
        UserAction.NONE,
        "Ce compte n'existe plus à la banque : il n'est plus synchronisé, ses opérations restent.",
    ),
}


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    retryable: bool

    @property
    def state(self) -> SyncState:
        return SyncState.ERROR if self.retryable else SyncState.ACTION_NEEDED

    @property
    def action(self) -> UserAction:
        """Only the reconnect webview clears a state that needs the user; the others pass by themselves."""
        if self.code in _ACTION_NEEDED:
            return UserAction.RECONNECT
        return UserAction.WAIT if self.retryable else UserAction.NONE

    def as_error(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "action": self.action.value}


# Powens connection states that need the user: no retry until they act in the reconnect webview
# (`POST .../connections/{id}/reconnect`); each message names that action.
_RECONNECT = "« Reconnecter »"
_STRONG_AUTH = f"Votre banque demande une authentification forte : validez l'accès avec {_RECONNECT}."
_ACTION_NEEDED: dict[str, str] = {
    "wrongpass": (
        f"Identifiants refusés par la banque : saisissez votre mot de passe à jour avec {_RECONNECT}."
    ),
    "SCARequired": _STRONG_AUTH,
    "webauthRequired": _STRONG_AUTH,
    "decoupled": f"Validez la connexion dans l'application de votre banque, puis utilisez {_RECONNECT}.",
    "actionNeeded": (
        "Votre banque demande une action sur son site (conditions à accepter, message à lire), "
        f"puis utilisez {_RECONNECT}."
    ),
    "additionalInformationNeeded": (
        f"Votre banque demande une information complémentaire : complétez-la avec {_RECONNECT}."
    ),
    "passwordExpired": (
        f"Mot de passe bancaire expiré : changez-le sur le site de la banque, puis utilisez {_RECONNECT}."
    ),
}
# an expired PSD2 consent (180 days) comes back as SCARequired: the same reconnect renews it
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
    # set when the app account was deleted since the last sync: every line is published again, and the
    # mark (this value) is cleared only if still the same when the sync succeeds
    reimport: str | None = None

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


# --- the connection's accounts over their life ------------------------------------------------------


def _decimal_text(value: Any, currency: str | None) -> str | None:
    """A balance the bank gives, exact; one that is no exact amount of its currency (a float with more
    places than it has) is unknown (null), never rounded, and does not fail the refresh of the connection."""
    try:
        return format_amount(to_amount(value, currency)) if value is not None else None
    except InvalidAmount:
        return None


def bank_account_view(account: Mapping[str, Any]) -> dict[str, Any]:
    """A Powens account as the connector keeps and shows it (the contract's connections API)."""
    currency = account.get("currency")
    code = currency.get("id") if isinstance(currency, dict) else currency
    return {
        "aggregator_account_id": str(account["id"]),
        "name": account.get("name") or account.get("original_name") or "",
        "iban": account.get("iban"),
        "number": account.get("number"),
        "type": account.get("type") or "unknown",
        "balance": _decimal_text(account.get("balance"), code),
        "coming": _decimal_text(account.get("coming"), code),
        "currency": code or "EUR",
        "selected": account.get("disabled") in (None, False) and not account.get("deleted"),
        "closed": bool(account.get("deleted")),
    }


# what a refresh may change of an account the connector knows (the user's selection is theirs)
_BANK_FIELDS = ("name", "iban", "number", "type", "balance", "coming", "currency")


@dataclass(frozen=True)
class AccountsFollowed:
    """The connection's accounts after a read of the bank's list, and what that read revealed."""

    accounts: list[dict[str, Any]]
    discovered: list[dict[str, Any]]
    closed: list[dict[str, Any]]

    def changed(self, before: Sequence[Mapping[str, Any]]) -> bool:
        return self.accounts != list(before)


def follow_bank_accounts(
    known: Sequence[Mapping[str, Any]], fetched: Sequence[Mapping[str, Any]] | None
) -> AccountsFollowed:
    """Merges the bank's account list (Powens `all_accounts`, closed ones with `deleted` set) into the
    accounts the connector knows. A new account is discovered unselected unless the aggregator already
    syncs it; one the bank reports deleted, or no longer lists, is closed (never reopened by a stale
    read, never removed: its operations stay). `fetched` None means the answer had no account list."""
    if fetched is None:
        return AccountsFollowed([dict(a) for a in known], [], [])
    seen = {str(a["id"]): bank_account_view(a) for a in fetched}
    accounts: list[dict[str, Any]] = []
    closed: list[dict[str, Any]] = []
    for before in known:
        account = dict(before)
        account.setdefault("closed", False)
        view = seen.pop(account["aggregator_account_id"], None)
        if view is not None:
            account.update({field: view[field] for field in _BANK_FIELDS})
        if not account["closed"] and (view is None or view["closed"]):
            account["closed"] = True
            closed.append(account)
        accounts.append(account)
    discovered = [view for view in seen.values() if not view["closed"]]
    return AccountsFollowed(accounts + discovered, discovered, closed)


def nightly_order(users: Iterable[str], span: timedelta) -> list[tuple[timedelta, str]]:
    """Each user's place in the night (`spread_offset`), earliest first: the scheduler requests them
    as their moment comes, so the aggregator sees a steady flow instead of everyone at the window's start."""
    return sorted((spread_offset(user, span), user) for user in users)


def spreading_span(window: NightlyWindow) -> timedelta:
    """Requests are spread over the first three quarters of the window; the last quarter lets the
    last of them finish inside it."""
    return window.span() * 3 / 4
