"""Erasing a user (RGPD article 17), the part every service shares.

Entitlements destroys the user's data key (shared.vault) and publishes `user.erasure_requested`. Each
service consumes it here, forgets the key it may have cached, removes every document of the user it
holds (its own `erase_user`), and answers `user.erased` with its name and how many documents went.
Running it twice is harmless: a second request finds nothing left and answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from shared.consumer import Incoming, TopicConsumer, data_of
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import UserErased, UserErasureRequested
from shared.contract.topics import ENTITLEMENTS
from shared.logging import get_logger
from shared.service import Runtime

log = get_logger(__name__)
EraseUser = Callable[[str], Awaitable[int]]


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

    TopicConsumer(
        runtime.broker,
        service,
        ENTITLEMENTS,
        {"user.erasure_requested": UserErasureRequested},
        on_requests,
        sealer=runtime.sealer,
    ).subscribe(erasures_group(runtime))
