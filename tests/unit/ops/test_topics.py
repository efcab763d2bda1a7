"""What `banksync topics` shows and what it checks against the contract."""

import pytest

from ops.textfmt import duration_ms, size_bytes, table
from ops.topics import TopicInfo, contract_problems, format_topics
from shared.contract.topics import TOPICS, TRANSACTIONS_RAW

DAY = 86_400_000


def info(name: str, **changes) -> TopicInfo:
    spec = next((s for s in TOPICS if s.name == name), None)
    fields = {
        "name": name,
        "partitions": 6,
        "replication_factor": 1,
        "cleanup_policy": "delete",
        "retention_ms": spec.retention_ms if spec else 7 * DAY,
        "retention_bytes": -1,
        "records": 0,
        "size_bytes": 0,
        "contract": spec is not None,
    }
    return TopicInfo(**{**fields, **changes})


@pytest.mark.parametrize(
    ("ms", "text"),
    [(-1, "forever"), (400 * DAY, "400d"), (3_600_000, "1h"), (120_000, "2m"), (1500, "1500ms"), (None, "-")],
)
def test_durations(ms, text):
    assert duration_ms(ms) == text


@pytest.mark.parametrize(
    ("size", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"), (5 * 1024**3, "5.0 GiB")]
)
def test_sizes(size, text):
    assert size_bytes(size) == text


def test_the_contract_topics_as_created_have_no_problem():
    assert contract_problems([info(spec.name) for spec in TOPICS], expected_partitions=6) == []


def test_missing_topics_wrong_partitions_and_short_raw_retention_are_problems():
    infos = [info(spec.name) for spec in TOPICS if spec.name != "banksync.dlq.v1"]
    infos = [
        info(i.name, partitions=3) if i.name == "banksync.operations.v1" else i
        for i in infos
        if i.name != TRANSACTIONS_RAW
    ] + [info(TRANSACTIONS_RAW, retention_ms=30 * DAY)]
    problems = contract_problems(infos, expected_partitions=6)
    assert "banksync.dlq.v1 is missing" in problems
    assert "banksync.operations.v1 has 3 partitions, expected 6" in problems
    assert any("transactions.raw.v1 keeps 30d" in p and "400d" in p for p in problems)


def test_a_raw_topic_kept_forever_or_compacted_is_fine():
    base = [info(spec.name) for spec in TOPICS if spec.name != TRANSACTIONS_RAW]
    assert contract_problems([*base, info(TRANSACTIONS_RAW, retention_ms=-1)]) == []
    assert (
        contract_problems([*base, info(TRANSACTIONS_RAW, cleanup_policy="compact", retention_ms=DAY)]) == []
    )


def test_table_shows_forever_for_unlimited_retention():
    text = format_topics(
        [info("banksync.connections.v1"), info(TRANSACTIONS_RAW, records=12, size_bytes=4096)]
    )
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["TOPIC", "PARTITIONS", "RF", "CLEANUP", "RETENTION"]
    assert "forever" in lines[1]
    assert lines[2].split() == [TRANSACTIONS_RAW, "6", "1", "delete", "400d", "12", "4.0", "KiB", "yes"]


def test_table_pads_columns():
    assert table(("A", "B"), [("long-value", None)]) == "A           B\nlong-value  -"
