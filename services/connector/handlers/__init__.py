"""What each request and event does in the connector, one module per subject: linking (activation,
callback, reconnect), connections (listing, account selection, removal), sync requests and runs, the
night, webhooks, the importer's events, entitlement pauses, the status and the erasure.

Each class takes ports (services/connector/ports.py) and does load → decide → store → announce;
`connector_handlers` builds them all over one set of ports (the app, and the tests over fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.connector.domain.secrets import StateSigner, TokenCipher
from services.connector.handlers.common import ConnectorConfig
from services.connector.handlers.connections import Connections
from services.connector.handlers.erasure import ConnectorEraser
from services.connector.handlers.gate import SyncGate
from services.connector.handlers.importer_events import ImporterEvents
from services.connector.handlers.linking import Linking
from services.connector.handlers.nightly import Nightly
from services.connector.handlers.pauses import Pauses
from services.connector.handlers.status import Status
from services.connector.handlers.syncs import Syncs
from services.connector.handlers.webhooks import Webhooks
from services.connector.ports import Aggregator, Announcer, ConnectorStore, Entitlements


@dataclass(frozen=True)
class ConnectorHandlers:
    config: ConnectorConfig
    gate: SyncGate
    linking: Linking
    connections: Connections
    syncs: Syncs
    nightly: Nightly
    webhooks: Webhooks
    importer_events: ImporterEvents
    pauses: Pauses
    status: Status
    eraser: ConnectorEraser


def connector_handlers(
    store: ConnectorStore,
    aggregator: Aggregator,
    entitlements: Entitlements,
    announcer: Announcer,
    cipher: TokenCipher,
    signer: StateSigner,
    config: ConnectorConfig,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ConnectorHandlers:
    gate = SyncGate(store, entitlements)
    pauses = Pauses(store, announcer)
    syncs = Syncs(store, aggregator, gate, announcer, cipher, pauses, config, clock)
    linking = Linking(store, aggregator, gate, announcer, cipher, signer, syncs, config, clock)
    return ConnectorHandlers(
        config=config,
        gate=gate,
        linking=linking,
        connections=Connections(store, aggregator, announcer, cipher, linking, syncs, clock),
        syncs=syncs,
        nightly=Nightly(store, gate, announcer, pauses, config, clock),
        webhooks=Webhooks(store, gate, syncs, config, clock),
        importer_events=ImporterEvents(store, clock),
        pauses=pauses,
        status=Status(store, clock),
        eraser=ConnectorEraser(store, aggregator, cipher),
    )


__all__ = ["ConnectorConfig", "ConnectorHandlers", "connector_handlers"]
