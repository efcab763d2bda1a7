"""What the connector's handlers share: their configuration, the events they build from the contract's
payload models, the problems they answer, and the announcement of what a read of the bank's accounts
revealed."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from services.connector.domain.accounts import AccountsFollowed
from services.connector.domain.connections import Connection
from services.connector.domain.failures import AggregatorError
from services.connector.domain.nightly import NightlyWindow
from services.connector.domain.rights import Rights
from services.connector.domain.secrets import TokenCipher
from services.connector.ports import AccountStates, AggregatorUsers, Announcer
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import AccountClosed, AccountDiscovered, AccountView, Payload
from shared.contract.topics import CONNECTIONS
from shared.logging import get_logger
from shared.problems import Problem

SERVICE = "connector"
log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ConnectorConfig:
    callback_base_url: str
    aggregator_public_url: str
    webhook_secret: str
    cursor_overlap: timedelta = timedelta(minutes=30)
    run_lease: timedelta = timedelta(minutes=10)
    nightly: NightlyWindow = field(default_factory=lambda: NightlyWindow.parse("02:00-04:00", "Europe/Paris"))
    # how far a webhook's signature date may be from our clock
    webhook_tolerance: timedelta = timedelta(minutes=5)

    @property
    def callback_url(self) -> str:
        """Where the aggregator's webview sends the browser back: a redirect URI registered for our client
        at the aggregator (exact match), and the one the code exchange names."""
        return f"{self.callback_base_url}/v1/callback"


def event_of(
    name: str,
    payload: Payload,
    correlation_id: str,
    *,
    user_id: str | None = None,
    event_id: str | None = None,
    subject: str | None = None,
    validated: bool = True,
) -> CloudEvent:
    """The CloudEvent of a contract payload: its data is the fields the producer set (a field it did
    not set is not written); about the payload's account, else its connection, unless `subject` says.
    `validated` False: the payload holds what is passed on unchecked (the bank's lines)."""
    data = payload.model_dump(mode="json", exclude_unset=True, warnings=validated)
    about = getattr(payload, "aggregator_account_id", None) or getattr(payload, "connection_id", None)
    return CloudEvent.new(
        service=SERVICE,
        name=name,
        data=data,
        user_id=user_id if user_id is not None else str(getattr(payload, "user_id", "")),
        correlation_id=correlation_id,
        event_id=event_id,
        subject=subject or about,
    )


class NotEntitled(Problem):
    def __init__(self, answer: Rights) -> None:
        super().__init__(
            403,
            "not_entitled",
            answer.reason or "La synchronisation automatique n'est pas incluse.",
            reason=answer.code,
        )


def activation_used() -> Problem:
    """A state already used (a replay, or the browser back twice): no data of the connection."""
    return Problem(409, "activation_used", "This activation was already used: start again.")


def entitlements_unavailable() -> Problem:
    return Problem(
        503,
        "entitlements_unavailable",
        "Impossible de vérifier vos droits pour le moment ; réessayez dans quelques instants.",
        headers={"Retry-After": "5"},
    )


def not_linked() -> Problem:
    return Problem(409, "not_linked", "Aucune banque n'est reliée : activez d'abord la synchronisation.")


def unknown_connection(connection_id: str) -> Problem:
    return Problem(404, "unknown_connection", f"No bank connection {connection_id} for this user.")


async def aggregator_call(awaitable: Awaitable[T]) -> T:
    """An aggregator call on a user's request: its failure is a 502 (retryable or not)."""
    try:
        return await awaitable
    except AggregatorError as exc:
        raise Problem(
            502, "aggregator_unavailable", exc.failure.message, retryable=exc.failure.retryable
        ) from None


async def user_token(users: AggregatorUsers, cipher: TokenCipher, user_id: str) -> str:
    """The user's aggregator token, decrypted; 409 `not_linked` when they never activated."""
    found = await users.aggregator_user(user_id)
    if found is None:
        raise not_linked()
    return cipher.decrypt(found.token_enc, user_id)


async def announce_followed(
    states: AccountStates,
    announcer: Announcer,
    conn: Connection,
    followed: AccountsFollowed,
    correlation_id: str,
) -> None:
    """`account.discovered` for the bank's new accounts and `account.closed` for those it closed, in
    one publish; a closed account's sync state says `closed` from now on."""
    user_id = conn.user_id
    events = [
        (
            user_id,
            event_of(
                "account.discovered",
                AccountDiscovered(
                    user_id=user_id,
                    connection_id=conn.connection_id,
                    bank=conn.bank,
                    account=AccountView.model_validate(dataclasses.asdict(account)),
                ),
                correlation_id,
                event_id=deterministic_event_id("account.discovered", user_id, account.aggregator_account_id),
            ),
        )
        for account in followed.discovered
    ] + [
        (
            user_id,
            event_of(
                "account.closed",
                AccountClosed(
                    user_id=user_id,
                    connection_id=conn.connection_id,
                    aggregator_account_id=account.aggregator_account_id,
                ),
                correlation_id,
                event_id=deterministic_event_id("account.closed", user_id, account.aggregator_account_id),
            ),
        )
        for account in followed.closed
    ]
    if not events:
        return
    if followed.closed:
        await states.mark_closed(
            user_id, conn.connection_id, [a.aggregator_account_id for a in followed.closed]
        )
    await announcer.publish_many(CONNECTIONS, events)
    log.info(
        "bank_accounts_changed",
        user_id=user_id,
        connection_id=conn.connection_id,
        discovered=[a.aggregator_account_id for a in followed.discovered],
        closed=[a.aggregator_account_id for a in followed.closed],
    )
