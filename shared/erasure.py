"""Erasing a user (RGPD article 17), the part every service shares.

Entitlements destroys the user's data key (shared.vault) and publishes `user.erasure_requested`. Each
service consumes it here, forgets the key it may have cached, removes every document of the user it
holds (its own `erase_user`), and answers `user.erased` with its name and how many documents went.
Running it twice is harmless: a second request finds nothing left and answers again.

With several replicas, only the one that consumes the request forgets the key at once; the others hold it
in their cache for up to `KeyVault.CACHE_TTL_S` and may still import the user's records already in flight.
So the removal runs once more after that time (`SECOND_SWEEP_S`), in the background: what such a replica
wrote meanwhile goes too. A process stopped before its second sweep leaves that window open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from shared.consumer import Incoming, TopicConsumer, data_of
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import UserErased, UserErasureRequested
from shared.contract.topics import ENTITLEMENTS
from shared.logging import get_logger
from shared.service import Runtime
from shared.vault import KeyVault

log = get_logger(__name__)
EraseUser = Callable[[str], Awaitable[int]]

SECOND_SWEEP_S = KeyVault.CACHE_TTL_S + 5
_sweeps: set[asyncio.Task[None]] = set()


async def sweep_again(erase_user: EraseUser, user_id: str, erase_id: str, after_s: float) -> None:
    """The user's documents removed once more, once every replica's cached key has expired."""
    await asyncio.sleep(after_s)
    documents = await erase_user(user_id)
    log.info("user_erased_second_sweep", user_id=user_id, erase_id=erase_id, documents=documents)


def erased_event(
    service: str, request: UserErasureRequested, documents: int, correlation_id: str
) -> CloudEvent:
    erased_at = datetime.now(UTC)
    return CloudEvent.new(
        service=service,
        name="user.erased",
        data=UserErased(
            user_id=request.user_id,
            erase_id=request.erase_id,
            service=service,
            documents_deleted=documents,
            erased_at=erased_at,
        ).model_dump(mode="json"),
        user_id=request.user_id,
        correlation_id=correlation_id,
        subject=request.user_id,
        event_id=deterministic_event_id(
            "user.erased", request.erase_id, service, request.requested_at.isoformat()
        ),
        time=erased_at,
    )


def erasures_group(runtime: Runtime) -> str:
    return runtime.settings.erasures_group_id or f"{runtime.service}-erasures"


def subscribe_erasures(runtime: Runtime, erase_user: EraseUser) -> None:
    """This service's consumer of erasure requests (its own group: an erasure is never skipped)."""
    service = runtime.service

    async def on_requests(batch: list[Incoming]) -> None:
        for incoming in batch:
            request: UserErasureRequested = data_of(incoming, UserErasureRequested)
            runtime.sealer.vault.forget(request.user_id)
            documents = await erase_user(request.user_id)
            log.info("user_erased", user_id=request.user_id, erase_id=request.erase_id, documents=documents)
            await runtime.publisher.publish(
                ENTITLEMENTS,
                request.user_id,
                erased_event(service, request, documents, incoming.event.correlationid),
            )
            sweep = asyncio.create_task(
                sweep_again(erase_user, request.user_id, request.erase_id, SECOND_SWEEP_S)
            )
            _sweeps.add(sweep)
            sweep.add_done_callback(_sweeps.discard)

    TopicConsumer(
        runtime.broker,
        service,
        ENTITLEMENTS,
        {"user.erasure_requested": UserErasureRequested},
        on_requests,
        sealer=runtime.sealer,
    ).subscribe(erasures_group(runtime))
