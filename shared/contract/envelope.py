"""CloudEvents 1.0 envelope (structured JSON mode) and the helpers that build and read it.

Every record on every contract topic is one `CloudEvent`, keyed by the topic's partition key.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPE_PREFIX = "fr.budgetfacile.banksync."
EVENT_ID_NAMESPACE = uuid.UUID("6f1f8f2e-5b1c-4f0e-9a57-1b0d3c2a9e44")
# extension attribute of `operation.categorized` ("true"/"false"): whether a category was found, in clear
# beside the sealed data, so that the dashboard counts the categorised share without any user's key
HAS_CATEGORY = "hascategory"


def event_type(name: str) -> str:
    """`operation.imported` -> `fr.budgetfacile.banksync.operation.imported.v1`."""
    return f"{EVENT_TYPE_PREFIX}{name}.v1"


def event_name(type_: str) -> str:
    """Inverse of `event_type`."""
    if not type_.startswith(EVENT_TYPE_PREFIX) or not type_.endswith(".v1"):
        raise ValueError(f"not a banksync v1 event type: {type_!r}")
    return type_[len(EVENT_TYPE_PREFIX) : -len(".v1")]


def deterministic_event_id(*parts: str) -> str:
    """An id that is the same whenever the same fact is restated, so a re-send is recognisable."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join(parts)))


def content_hash(data: Any) -> str:
    """Stable short hash of a JSON-able value (used to version a restated fact)."""
    from shared.jsonutil import dumps_canonical

    return hashlib.sha256(dumps_canonical(data)).hexdigest()[:16]


def account_key(user_id: str, account_id: str) -> str:
    """Partition key of everything about one account: `<user>:<account>`."""
    return f"{user_id}:{account_id}"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event with the banksync extensions `userid` and `correlationid`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    datacontenttype: str = "application/json"
    data: dict[str, Any]
    userid: str
    correlationid: str

    @classmethod
    def new(
        cls,
        *,
        service: str,
        name: str,
        data: dict[str, Any],
        user_id: str,
        correlation_id: str,
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
        extensions: dict[str, str] | None = None,
    ) -> CloudEvent:
        fields: dict[str, Any] = {
            **(extensions or {}),
            "source": f"/banksync/{service}",
            "type": event_type(name),
            "subject": subject,
            "data": data,
            "userid": user_id,
            "correlationid": correlation_id,
        }
        if event_id is not None:
            fields["id"] = event_id
        if time is not None:
            fields["time"] = time
        return cls(**fields)

    @property
    def name(self) -> str:
        return event_name(self.type)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> CloudEvent:
        return cls.model_validate_json(raw)
