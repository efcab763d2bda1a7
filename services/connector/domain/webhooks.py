"""What a CONNECTION_SYNCED webhook says, once its signature holds (see secrets.WebhookVerifier)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionSynced:
    """The aggregator refreshed a connection (of its user `aggregator_user_id`) at `last_update`."""

    aggregator_user_id: str
    connection_id: str
    last_update: str | None = None

    @classmethod
    def parse(cls, body: Mapping[str, object]) -> ConnectionSynced | None:
        """None when the body names no `connection.id` (the caller answers 422)."""
        connection = body.get("connection")
        if not isinstance(connection, dict) or "id" not in connection:
            return None
        owner = body.get("user")
        aggregator_user = owner if isinstance(owner, dict) else {}
        last_update = connection.get("last_update")
        return cls(
            str(aggregator_user.get("id", "")),
            str(connection["id"]),
            str(last_update) if last_update else None,
        )


@dataclass(frozen=True)
class WebhookAnswer:
    """What the webhook did: `accepted` (a run, `sync_run_id`), `ignored`, `already_read` or `skipped`."""

    status: str
    sync_run_id: str | None = None
