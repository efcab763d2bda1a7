"""Dead letters as shared.consumer writes them, and redrive marks: parsing, ids, headers, rendering."""

import json

import pytest
from aiokafka import ConsumerRecord

from ops.dlq import (
    REDRIVE_OF,
    REDRIVEN_AT,
    REDRIVEN_TO,
    format_list,
    format_ref,
    format_show,
    parse_ref,
    view_of,
)
from ops.errors import BadArgument
from shared.consumer import dlq_headers
from shared.contract.topics import DLQ, TRANSACTIONS_RAW

VALUE = json.dumps({"type": "fr.budgetfacile.banksync.transaction.observed.v1", "data": {"bad": 1}}).encode()


def record(topic, partition, offset, headers, key=b"u1:a1", value=VALUE) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 1_700_000_000_000, 0, key, value, None, 0, 0, headers)


def dead_letter(partition: int, offset: int, original_offset: int = 41) -> ConsumerRecord:
    original = record(
        TRANSACTIONS_RAW,
        2,
        original_offset,
        [("content-type", b"application/cloudevents+json"), ("ce_id", b"e1")],
    )
    headers = dlq_headers(original, "importer", "invalid record: ValidationError: user_id missing")
    return record(DLQ, partition, offset, [(k, v.encode()) for k, v in headers.items()])


def mark(partition: int, offset: int, of: str) -> ConsumerRecord:
    headers = [
        (REDRIVE_OF, of.encode()),
        (REDRIVEN_TO, f"{TRANSACTIONS_RAW}:2:99".encode()),
        (REDRIVEN_AT, b"now"),
    ]
    return record(DLQ, partition, offset, headers, value=b"")


@pytest.mark.parametrize(
    ("text", "ref"), [("3:17", (3, 17)), (" 0:0 ", (0, 0)), ("12:123456789", (12, 123456789))]
)
def test_ids_are_partition_colon_offset(text, ref):
    assert parse_ref(text) == ref
    assert parse_ref(format_ref(ref)) == ref


@pytest.mark.parametrize("text", ["", "3", "3:", ":4", "a:1", "1:-2", "1:2:3", "1.5:2"])
def test_malformed_ids_are_bad_arguments(text):
    with pytest.raises(BadArgument, match="PARTITION:OFFSET"):
        parse_ref(text)


def test_dead_letters_carry_where_they_came_from_and_why():
    view = view_of([dead_letter(1, 0)])
    [letter] = view.dead_letters
    assert letter.ref == (1, 0)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        TRANSACTIONS_RAW,
        2,
        41,
    )
    assert letter.service == "importer"
    assert letter.error.startswith("invalid record")
    assert letter.key == "u1:a1"
    assert letter.redriven is None
    assert view.waiting == [letter]


def test_redrive_headers_are_the_originals_without_dlq_ones():
    [letter] = view_of([dead_letter(1, 0)]).dead_letters
    assert dict(letter.redrive_headers()) == {"content-type": b"application/cloudevents+json", "ce_id": b"e1"}


def test_a_mark_attaches_to_its_dead_letter_and_is_not_itself_a_dead_letter():
    view = view_of([dead_letter(1, 0), dead_letter(1, 1, original_offset=42), mark(1, 2, "1:0")])
    assert [d.ref for d in view.dead_letters] == [(1, 0), (1, 1)]
    assert view.dead_letters[0].redriven is not None
    assert view.dead_letters[0].redriven.to == f"{TRANSACTIONS_RAW}:2:99"
    assert view.dead_letters[1].redriven is None
    assert [d.ref for d in view.waiting] == [(1, 1)]
    assert view.mark_positions == {(1, 2)}
    assert view.find((1, 2)) is None


def test_list_and_show_render_the_essentials():
    view = view_of([dead_letter(4, 7), mark(4, 8, "4:7")])
    listing = format_list(view.dead_letters)
    assert listing.splitlines()[0].split()[:4] == ["ID", "ORIGINAL-TOPIC", "PARTITION", "OFFSET"]
    assert "4:7" in listing
    assert f"redriven -> {TRANSACTIONS_RAW}:2:99" in listing
    shown = format_show(view.dead_letters[0])
    assert f"original:         {TRANSACTIONS_RAW} partition 2 offset 41" in shown
    assert '"bad": 1' in shown  # the value, pretty-printed
    assert "dlq.error: invalid record" in shown
