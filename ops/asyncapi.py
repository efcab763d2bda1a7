"""The AsyncAPI 3 document of every contract topic and event, generated from the code.

A faststream KafkaBroker (never started) declares, for each topic of shared.contract.catalog, a
publisher for the service that writes it and a subscriber per service that reads it; each message's
payload is the CloudEvents envelope whose `type` and `data` are the event's (one schema per event type, a
discriminated union where a topic carries several). faststream turns that into the document.
`banksync asyncapi` writes it to docs/asyncapi.json, `--check` fails when the committed file is stale,
and the dashboard serves it at /asyncapi.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import Field, create_model

from shared.contract.catalog import CATALOG, DLQ_DOC, ConsumerDoc, EventDoc, TopicDoc
from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent, event_type
from shared.contract.topics import DLQ, SEALED_TOPICS, TOPICS

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
TITLE = "Budgetfacile banksync events"
VERSION = "1.0.0"
DESCRIPTION = (
    "Every record on every topic is one CloudEvents 1.0 event in structured JSON mode "
    f"(`content-type: {CLOUDEVENTS_CONTENT_TYPE}`, Kafka headers `ce_type` and `ce_id` repeat the type "
    "and id), keyed by the topic's partition key. `type` is `fr.budgetfacile.banksync.<name>.v1`; the "
    "extensions `userid` and `correlationid` name the user and the sync run or request that caused it. "
    f"On {', '.join(f'`{t}`' for t in sorted(SEALED_TOPICS))} the `data` of a user's event is sealed with "
    "that user's key (crypto-shredding, see README): `datacontenttype` is `application/jose` and `data` a "
    "JWE compact serialisation (`dir`, `A256GCM`, the event id bound in its protected header) whose "
    "plaintext is the JSON object described here; the attributes stay in clear. Erasing the user destroys "
    "the key. "
    "Generated from the code by `banksync asyncapi`; do not edit by hand."
)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace(".", "_").split("_"))


@cache
def envelope(event: EventDoc, own_model: bool = False) -> type[CloudEvent]:
    """`CloudEvent` narrowed to one event type: its `type` constant and its `data` model (a consumer
    that validates with a model of its own gets its own envelope, named after that model)."""
    type_ = event_type(event.name)
    literal: Any = Literal[type_]
    suffix = f"As{event.model.__name__}" if own_model else ""
    model: type[CloudEvent] = create_model(
        f"{_camel(event.name)}Event{suffix}",
        __base__=CloudEvent,
        __doc__=(event.model.__doc__ or f"`{event.name}`").strip(),
        type=(literal, ...),
        data=(event.model, ...),
    )
    return model


def topic_payload(events: Sequence[EventDoc], produced: Sequence[EventDoc] = ()) -> Any:
    """One envelope, or a union discriminated by `type`. `produced`: what the producer writes, to tell
    where a consumer reads with a different model."""
    written = {e.name: e.model for e in produced}
    models = tuple(envelope(e, written.get(e.name, e.model) is not e.model) for e in events)
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - a runtime tuple of types


def _describe(topic: TopicDoc) -> str:
    events = ", ".join(f"`{e.name}`" for e in topic.events)
    retention = next((spec for spec in TOPICS if spec.name == topic.name), None)
    kept = ""
    if retention is not None:
        kept = (
            " Kept forever."
            if retention.retention_ms < 0
            else f" Kept {retention.retention_ms // 86_400_000} days."
        )
    return f"{topic.summary} Key: `{topic.key}`. Events: {events}. Written by {topic.producer}.{kept}"


def _handler(payload: Any) -> Callable[[Any], Coroutine[Any, Any, None]]:
    async def consume(body: Any) -> None:  # pragma: no cover - documentation only, never run
        return None

    consume.__annotations__ = {"body": payload, "return": None}
    return consume


def build_broker() -> KafkaBroker:
    broker = KafkaBroker(
        "localhost:9092",
        description="Apache Kafka (KRaft); locally `make up` runs one node on localhost:9092.",
        logger=None,
    )
    for topic in CATALOG:
        description = _describe(topic)
        broker.publisher(
            topic.name,
            title=f"{topic.name}:{topic.producer}:send",
            description=description,
            schema=topic_payload(topic.events),
        )
        for consumer in topic.consumers:
            reads = [EventDoc(name, model) for name, model in consumer.models]
            group = f" as consumer group `{consumer.group}`" if consumer.group else ""
            broker.subscriber(
                topic.name,
                group_id=consumer.group,
                title=receive_operation(topic, consumer),
                description=f"{consumer.service} reads {', '.join(f'`{e.name}`' for e in reads)}{group}.",
            )(_handler(topic_payload(reads, topic.events)))
    broker.publisher(DLQ, title=f"{DLQ}:any-consumer:send", description=DLQ_DOC, schema=bytes)
    return broker


def receive_operation(topic: TopicDoc, consumer: ConsumerDoc) -> str:
    """The AsyncAPI operation of one consumer of a topic; a service that reads the topic in two groups
    (its erasures, say) has one per group."""
    services = [c.service for c in topic.consumers]
    reader = (
        consumer.service if services.count(consumer.service) == 1 else f"{consumer.service}:{consumer.group}"
    )
    return f"{topic.name}:{reader}:receive"


def document() -> dict[str, Any]:
    spec = AsyncAPI(
        build_broker(), title=TITLE, version=VERSION, description=DESCRIPTION, schema_version="3.0.0"
    )
    generated: dict[str, Any] = json.loads(spec.to_specification().to_json())
    # faststream keeps subscribers in an unordered registry: sort the named sections so the document
    # is byte-for-byte the same from one run to the next (`--check` compares bytes)
    for section in ("channels", "operations"):
        generated[section] = _sorted(generated.get(section, {}))
    components = generated.get("components", {})
    for section in list(components):
        components[section] = _sorted(components[section])
    return generated


def _sorted(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: mapping[key] for key in sorted(mapping)}


def document_text() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def write(path: Path = DOCUMENT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document_text(), encoding="utf-8")
    return path


def is_current(path: Path = DOCUMENT_PATH) -> bool:
    try:
        return path.read_text(encoding="utf-8") == document_text()
    except OSError:
        return False


def summary(doc: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(channel, topic, message payload titles) for humans."""
    out: list[tuple[str, str, list[str]]] = []
    for name, channel in doc.get("channels", {}).items():
        out.append((name, channel.get("address", ""), sorted(channel.get("messages", {}))))
    return out
