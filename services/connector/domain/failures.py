"""What a failure means: the account's state, what the user can do, whether to retry and how soon."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


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

    def as_error(self) -> SyncError:
        return SyncError(self.code, self.message, self.action.value)


@dataclass(frozen=True)
class SyncError:
    """A failure as a connection or an account keeps it (and the status shows it)."""

    code: str
    message: str
    action: str = ""


class AggregatorError(Exception):
    """The aggregator could not do what it was asked (after the retries a passing trouble deserves)."""

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(f"{failure.code}: {detail or failure.message}")
        self.failure = failure


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


def backoff_delays(
    attempts: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> Iterator[float]:
    """Exponential backoff with full jitter (AWS style): uniform in [0, min(cap, base * 2^n)]."""
    draw = rng or random.Random()
    for attempt in range(attempts):
        yield draw.uniform(0, min(cap_s, base_s * 2**attempt))
