"""Dead letters on `banksync.dlq.v1`: list, show, and redrive them to the topic they came from.

A dead letter is the original record (same key, value and headers) plus the `dlq.*` headers that
shared.consumer adds: original topic, partition, offset, the error, the service and when it failed.
Its id here is its own place in the DLQ, `<partition>:<offset>`.

Redrive is idempotent per dead letter: in one Kafka transaction it sends the record back to its
original topic (original key, headers minus `dlq.*`, the value as it was or as fixed by the operator)
and appends a small *redrive mark* to the same DLQ partition (empty value, header `dlq.redrive_of`).
A dead letter with a mark is never sent again; since both writes commit or abort together, a crash
cannot leave a record sent without its mark, or the reverse. Consumers of the original topic are
idempotent anyway (contract: at-least-once everywhere).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError

from ops.errors import BadArgument, OpsError
from ops.kafka import KafkaInspector
from ops.textfmt import table
from shared.consumer import DLQ_HEADER_PREFIX
from shared.contract.topics import DLQ

ORIGINAL_TOPIC = f"{DLQ_HEADER_PREFIX}original_topic"
ORIGINAL_PARTITION = f"{DLQ_HEADER_PREFIX}original_partition"
ORIGINAL_OFFSET = f"{DLQ_HEADER_PREFIX}original_offset"
ERROR = f"{DLQ_HEADER_PREFIX}error"
SERVICE = f"{DLQ_HEADER_PREFIX}service"
FAILED_AT = f"{DLQ_HEADER_PREFIX}failed_at"
# headers of a redrive mark
REDRIVE_OF = f"{DLQ_HEADER_PREFIX}redrive_of"
REDRIVEN_TO = f"{DLQ_HEADER_PREFIX}redriven_to"
REDRIVEN_AT = f"{DLQ_HEADER_PREFIX}redriven_at"
REDRIVE_FIXED = f"{DLQ_HEADER_PREFIX}redrive_fixed"
OPS_SERVICE = "banksync-ops"
REDRIVE_TRANSACTIONAL_ID = "banksync-ops-dlq-redrive"

_REF = re.compile(r"^(\d{1,6}):(\d{1,19})$")

Ref = tuple[int, int]


def parse_ref(text: str) -> Ref:
    """`3:17` -> (3, 17): a dead letter's partition and offset in the DLQ."""
    found = _REF.match(text.strip())
    if not found:
        raise BadArgument(
            f"{text!r} is not a dead-letter id: use PARTITION:OFFSET as `dlq list` shows, e.g. 3:17"
        )
    return int(found.group(1)), int(found.group(2))


def format_ref(ref: Ref) -> str:
    return f"{ref[0]}:{ref[1]}"


@dataclass(frozen=True)
class RedriveMark:
    of: Ref
    to: str
    at: str
    fixed: bool


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    error: str
    service: str
    failed_at: str
    redriven: RedriveMark | None = None

    @property
    def ref(self) -> Ref:
        return (self.partition, self.offset)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    def redrive_headers(self) -> list[tuple[str, bytes]]:
        """The original record's headers: everything but `dlq.*`."""
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]


@dataclass
class DlqView:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    marks: dict[Ref, RedriveMark] = field(default_factory=dict)
    # where the marks themselves sit in the DLQ
    mark_positions: set[Ref] = field(default_factory=set)

    def find(self, ref: Ref) -> DeadLetter | None:
        for letter in self.dead_letters:
            if letter.ref == ref:
                return letter
        return None

    @property
    def waiting(self) -> list[DeadLetter]:
        return [d for d in self.dead_letters if d.redriven is None]


def _header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in headers}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def view_of(records: Sequence[ConsumerRecord[bytes, bytes]]) -> DlqView:
    """Dead letters and redrive marks among DLQ records; each letter carries its mark if it has one."""
    letters: list[DeadLetter] = []
    marks: dict[Ref, RedriveMark] = {}
    mark_positions: set[Ref] = set()
    for record in records:
        headers = tuple((k, v or b"") for k, v in (record.headers or ()))
        named = _header_map(headers)
        if REDRIVE_OF in named:
            mark_positions.add((record.partition, record.offset))
            try:
                of = parse_ref(named[REDRIVE_OF])
            except BadArgument:
                continue
            marks.setdefault(
                of,
                RedriveMark(
                    of, named.get(REDRIVEN_TO, "?"), named.get(REDRIVEN_AT, ""), REDRIVE_FIXED in named
                ),
            )
            continue
        letters.append(
            DeadLetter(
                partition=record.partition,
                offset=record.offset,
                timestamp_ms=record.timestamp,
                key=record.key.decode(errors="replace") if record.key is not None else None,
                value=record.value or b"",
                headers=headers,
                original_topic=named.get(ORIGINAL_TOPIC),
                original_partition=_int(named.get(ORIGINAL_PARTITION)),
                original_offset=_int(named.get(ORIGINAL_OFFSET)),
                error=named.get(ERROR, ""),
                service=named.get(SERVICE, ""),
                failed_at=named.get(FAILED_AT, ""),
            )
        )
    letters = [
        replace(letter, redriven=marks[letter.ref]) if letter.ref in marks else letter for letter in letters
    ]
    return DlqView(letters, marks, mark_positions)


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_list(letters: Sequence[DeadLetter], error_width: int = 70) -> str:
    rows = [
        (
            format_ref(d.ref),
            d.original_topic,
            d.original_partition,
            d.original_offset,
            d.key,
            d.service or None,
            d.failed_at[:19] or None,
            f"redriven -> {d.redriven.to}" if d.redriven else "waiting",
            short(d.error, error_width) or None,
        )
        for d in letters
    ]
    return table(
        ("ID", "ORIGINAL-TOPIC", "PARTITION", "OFFSET", "KEY", "SERVICE", "FAILED-AT", "STATUS", "ERROR"),
        rows,
    )


def format_show(letter: DeadLetter) -> str:
    lines = [
        f"id:               {format_ref(letter.ref)}  (topic {DLQ})",
        f"original:         {letter.original_topic} partition {letter.original_partition}"
        f" offset {letter.original_offset}",
        f"key:              {letter.key}",
        f"service:          {letter.service}",
        f"failed at:        {letter.failed_at}",
        f"error:            {letter.error}",
    ]
    if letter.redriven:
        fixed = " (with a fixed value)" if letter.redriven.fixed else ""
        lines.append(f"redriven:         {letter.redriven.at} to {letter.redriven.to}{fixed}")
    else:
        lines.append("redriven:         no")
    lines.append("headers:")
    lines += [f"  {k}: {v.decode(errors='replace')}" for k, v in letter.headers]
    lines.append("value:")
    lines.append(pretty_value(letter.value))
    return "\n".join(lines)


def pretty_value(value: bytes) -> str:
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        return value.decode(errors="replace") or "(empty)"


async def load(inspector: KafkaInspector, partitions: Sequence[int] | None = None) -> DlqView:
    return view_of(await inspector.read_topic(DLQ, partitions=partitions))


@dataclass(frozen=True)
class RedriveResult:
    ref: Ref
    topic: str
    partition: int
    offset: int
    fixed: bool


async def redrive(
    inspector: KafkaInspector, ref: Ref, *, value: bytes | None = None, now: datetime | None = None
) -> RedriveResult:
    """Send dead letter `ref` back to its original topic once; refuses what is missing or already done."""
    view = await load(inspector, partitions=[ref[0]])
    letter = view.find(ref)
    if letter is None:
        if ref in view.mark_positions:
            raise OpsError(f"{format_ref(ref)} is a redrive mark, not a dead letter")
        raise OpsError(f"no dead letter at {format_ref(ref)} in {DLQ} (see `banksync dlq list`)")
    if letter.redriven is not None:
        raise OpsError(
            f"{format_ref(ref)} was already redriven at {letter.redriven.at} to {letter.redriven.to}; "
            "it is not sent twice"
        )
    topic = letter.original_topic
    if not topic:
        raise OpsError(f"{format_ref(ref)} has no {ORIGINAL_TOPIC} header: nowhere to send it back")
    if topic not in (await inspector.partitions([topic])):
        raise OpsError(f"{format_ref(ref)} came from {topic}, which does not exist any more")
    payload = letter.value if value is None else value
    when = (now or datetime.now(UTC)).isoformat()
    producer = AIOKafkaProducer(
        bootstrap_servers=inspector.bootstrap,
        client_id="banksync-ops-redrive",
        transactional_id=REDRIVE_TRANSACTIONAL_ID,
        enable_idempotence=True,
        acks="all",
    )
    try:
        await producer.start()
        async with producer.transaction():
            sent = await producer.send_and_wait(
                topic,
                payload,
                key=letter.key.encode() if letter.key is not None else None,
                headers=letter.redrive_headers(),
            )
            target = f"{sent.topic}:{sent.partition}:{sent.offset}"
            mark_headers = [
                (REDRIVE_OF, format_ref(ref).encode()),
                (REDRIVEN_TO, target.encode()),
                (REDRIVEN_AT, when.encode()),
                (SERVICE, OPS_SERVICE.encode()),
            ]
            if value is not None:
                mark_headers.append((REDRIVE_FIXED, b"true"))
            await producer.send_and_wait(
                DLQ,
                b"",
                key=letter.key.encode() if letter.key is not None else None,
                partition=ref[0],
                headers=mark_headers,
            )
    except KafkaError as exc:
        raise OpsError(f"redrive of {format_ref(ref)} failed, nothing was sent: {exc}") from exc
    finally:
        await producer.stop()
    return RedriveResult(ref, sent.topic, sent.partition, sent.offset, value is not None)
