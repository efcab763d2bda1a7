"""Wiring of the connector (its one composition root): adapters (MongoDB, Kafka, the aggregator and
entitlements over HTTP), the handlers over them, the consumers and the nightly scheduler."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from pydantic import Field, SecretStr

from services.connector.adapters.entitlements import EntitlementsClient
from services.connector.adapters.kafka import KafkaAnnouncer
from services.connector.adapters.mongo import ConnectorRepository
from services.connector.adapters.powens import PowensClient, RetryPolicy
from services.connector.api import ops, public, users
from services.connector.components import ConnectorComponents
from services.connector.domain.nightly import NightlyWindow, spreading_span
from services.connector.domain.secrets import StateSigner, TokenCipher
from services.connector.handlers import ConnectorConfig, connector_handlers
from shared.batch_publisher import BatchPublisher
from shared.consumer import Incoming, TopicConsumer, data_of
from shared.contract.catalog import (
    CONNECTOR_ENTITLEMENTS_GROUP,
    CONNECTOR_IMPORTER_EVENTS_GROUP,
    CONNECTOR_OPERATION_READS,
    CONNECTOR_SYNC_GROUP,
)
from shared.contract.payloads import AccountBalanceChecked, AccountDeleted, EntitlementChanged, SyncRequested
from shared.contract.topics import ENTITLEMENTS, OPERATIONS, SYNC_REQUESTS
from shared.erasure import subscribe_erasures
from shared.logging import get_logger
from shared.service import Runtime, create_service_app
from shared.settings import ServiceSettings

SERVICE = "connector"
log = get_logger(__name__)
# development defaults, for `make up` and the tests only; the sandbox's own defaults are the same
# (sandbox/clients.py, sandbox/app.py). Production sets AGGREGATOR_CLIENT_ID, AGGREGATOR_CLIENT_SECRET and
# AGGREGATOR_WEBHOOK_SECRET to what the aggregator's console gives.
DEV_AGGREGATOR_CLIENT_ID = "banksync-dev-client"
DEV_AGGREGATOR_CLIENT_SECRET = "dev-only-aggregator-client-secret"
DEV_AGGREGATOR_WEBHOOK_SECRET = "dev-only-webhook-secret"


class ConnectorSettings(ServiceSettings):
    # where browsers reach the aggregator's webview (defaults to AGGREGATOR_BASE_URL)
    aggregator_public_url: str | None = None
    # our client application at the aggregator (Powens' `client_id`, `client_secret`): sent on
    # `POST /auth/init` and on the code exchange; the id also in the webview's URL
    aggregator_client_id: str = DEV_AGGREGATOR_CLIENT_ID
    aggregator_client_secret: SecretStr = SecretStr(DEV_AGGREGATOR_CLIENT_SECRET)
    # the key of the webhooks' HMAC signature (BI-Signature), shared with the aggregator
    aggregator_webhook_secret: SecretStr = SecretStr(DEV_AGGREGATOR_WEBHOOK_SECRET)
    # how far a webhook's BI-Signature-Date may be from our clock
    aggregator_webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)
    aggregator_retry_budget_s: float = 60.0
    aggregator_retry_attempts: int = 6
    aggregator_retry_base_s: float = 0.5
    nightly_window: str = "02:00-04:00"
    nightly_timezone: str = "Europe/Paris"
    nightly_enabled: bool = True
    sync_cursor_overlap_s: int = 1800
    sync_workers_group: str = CONNECTOR_SYNC_GROUP
    # sync requests of one batch handled at once (different users wait on the aggregator in parallel);
    # a run sends few database writes now, so 16 keep the engine busy where 8 left it waiting
    sync_concurrency: int = Field(default=16, ge=1)
    entitlements_group: str = CONNECTOR_ENTITLEMENTS_GROUP
    importer_events_group: str = CONNECTOR_IMPORTER_EVENTS_GROUP

    def secrets(self) -> dict[str, tuple[SecretStr, str]]:
        return {
            **super().secrets(),
            "AGGREGATOR_CLIENT_SECRET": (self.aggregator_client_secret, DEV_AGGREGATOR_CLIENT_SECRET),
            "AGGREGATOR_WEBHOOK_SECRET": (self.aggregator_webhook_secret, DEV_AGGREGATOR_WEBHOOK_SECRET),
        }


async def wire(runtime: Runtime) -> ConnectorComponents:
    settings = runtime.settings
    assert isinstance(settings, ConnectorSettings)
    repository = ConnectorRepository(runtime.db)
    await repository.create_indexes()
    powens = PowensClient(
        settings.aggregator_base_url,
        client_id=settings.aggregator_client_id,
        client_secret=settings.aggregator_client_secret,
        retry=RetryPolicy(
            attempts=settings.aggregator_retry_attempts,
            base_s=settings.aggregator_retry_base_s,
            budget_s=settings.aggregator_retry_budget_s,
        ),
    )
    jwt_secret = settings.banksync_jwt_secret.get_secret_value()
    cipher = TokenCipher(settings.banksync_token_key.get_secret_value())
    # started here, not on first use: concurrent first publishes (a run's accounts) would start it twice
    lines_publisher = BatchPublisher(
        settings.kafka_bootstrap_servers, f"banksync-{SERVICE}-lines", SERVICE, runtime.sealer
    )
    await lines_publisher.start()
    entitlements = EntitlementsClient(settings.entitlements_url, settings.token_policy())
    handlers = connector_handlers(
        repository,
        powens,
        entitlements,
        KafkaAnnouncer(runtime.publisher, lines_publisher),
        cipher,
        StateSigner(jwt_secret),
        ConnectorConfig(
            callback_base_url=settings.connector_url.rstrip("/"),
            aggregator_public_url=(settings.aggregator_public_url or settings.aggregator_base_url).rstrip(
                "/"
            ),
            webhook_secret=settings.aggregator_webhook_secret.get_secret_value(),
            cursor_overlap=timedelta(seconds=settings.sync_cursor_overlap_s),
            nightly=NightlyWindow.parse(settings.nightly_window, settings.nightly_timezone),
            webhook_tolerance=timedelta(seconds=settings.aggregator_webhook_tolerance_s),
        ),
    )
    subscribe_erasures(runtime, handlers.eraser.erase_user)

    slots = asyncio.Semaphore(settings.sync_concurrency)

    async def sync_one(incoming: Incoming) -> None:
        async with slots:
            await handlers.syncs.handle_sync_request(
                data_of(incoming, SyncRequested), incoming.event.correlationid
            )

    async def on_sync_requests(batch: list[Incoming]) -> None:
        # a failure cancels the rest and the batch is retried record by record: runs are idempotent
        # (fingerprints, deterministic event ids) and leases are released in `finally`
        try:
            async with asyncio.TaskGroup() as group:
                for incoming in batch:
                    group.create_task(sync_one(incoming))
        except ExceptionGroup as failed:
            # the consumer tells "engines away, wait" from "bad record" by the exception's type
            raise failed.exceptions[0] from failed

    async def on_entitlements(batch: list[Incoming]) -> None:
        for incoming in batch:
            await handlers.pauses.on_entitlement_changed(
                data_of(incoming, EntitlementChanged), incoming.event.correlationid
            )

    TopicConsumer(
        runtime.broker,
        SERVICE,
        SYNC_REQUESTS,
        {"sync.requested": SyncRequested},
        on_sync_requests,
        sealer=runtime.sealer,
    ).subscribe(settings.sync_workers_group, max_records=max(10, 2 * settings.sync_concurrency))
    TopicConsumer(
        runtime.broker, SERVICE, ENTITLEMENTS, {"entitlement.changed": EntitlementChanged}, on_entitlements
    ).subscribe(settings.entitlements_group)

    async def on_importer_events(batch: list[Incoming]) -> None:
        await handlers.importer_events.on_importer_events(
            [
                (i.event.id, i.data)
                for i in batch
                if isinstance(i.data, AccountDeleted | AccountBalanceChecked)
            ]
        )

    TopicConsumer(
        runtime.broker,
        SERVICE,
        OPERATIONS,
        dict(CONNECTOR_OPERATION_READS),
        on_importer_events,
        sealer=runtime.sealer,
    ).subscribe(
        # a new group starts at the end: what matters is the deletions made from now on, not the topic's
        # whole history of operations
        settings.importer_events_group,
        auto_offset_reset="latest",
    )
    return ConnectorComponents(
        handlers,
        repository,
        settings.nightly_enabled,
        closers=(powens.aclose, lines_publisher.stop, entitlements.aclose),
    )


async def close(components: ConnectorComponents) -> None:
    for closer in components.closers:
        await closer()


async def nightly_scheduler(components: ConnectorComponents) -> None:
    """Sleeps until the window opens, then runs once per night (a claim makes one replica do it)."""
    if not components.nightly_enabled:
        return
    nightly = components.handlers.nightly
    window = components.handlers.config.nightly
    while True:
        wake = window.next_start(datetime.now(UTC))
        await asyncio.sleep(max(1.0, (wake - datetime.now(UTC)).total_seconds()))
        now = datetime.now(UTC)
        night = window.run_key(now)
        if await components.repository.claim_nightly(night, now):
            correlation_id = f"nightly-{night}-{uuid.uuid4().hex[:8]}"
            try:
                await nightly.nightly_run(correlation_id, night=night, spread_over=spreading_span(window))
                window_end = wake + window.span()
                await asyncio.sleep(max(0.0, (window_end - datetime.now(UTC)).total_seconds()))
                await nightly.check_night(night, window_end, correlation_id)
            except Exception as exc:
                log.error("nightly_run_failed", error=repr(exc))


def create_app(settings: ConnectorSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ConnectorSettings(),
        routers=[users, public, ops],
        wire=wire,
        on_shutdown=[close],
        background=[nightly_scheduler],
        description="Aggregator link, scheduling and raw transaction events.",
    )
