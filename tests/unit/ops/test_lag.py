"""Lag arithmetic and its table, as Kafka's ConsumerGroupCommand shows them."""

import json

from ops.lag import HEADERS, GroupSnapshot, LagRow, Member, all_rows, format_rows, lag_of, rows_json, totals

T = "banksync.transactions.raw.v1"
MEMBER = Member("aiokafka-1", "/127.0.0.1", "banksync-importer")


def test_lag_is_end_minus_committed_and_unknown_without_a_commit():
    assert lag_of(4, 10) == 6
    assert lag_of(10, 10) == 0
    assert lag_of(None, 10) is None
    assert lag_of(-1, 10) is None  # Kafka's "no offset"
    assert lag_of(3, None) is None


def test_rows_cover_assigned_and_committed_partitions():
    snapshot = GroupSnapshot(
        "importer",
        "Stable",
        committed={(T, 0): 5, (T, 2): 7},
        assignments={(T, 0): MEMBER, (T, 1): MEMBER},
    )
    rows = all_rows([snapshot], {(T, 0): 9, (T, 1): 3, (T, 2): 7})
    assert rows == [
        LagRow("importer", T, 0, 5, 9, 4, "aiokafka-1", "/127.0.0.1", "banksync-importer"),
        # assigned but never committed: offsets unknown, as the tool prints `-`
        LagRow("importer", T, 1, None, 3, None, "aiokafka-1", "/127.0.0.1", "banksync-importer"),
        # committed by a member that left: no consumer
        LagRow("importer", T, 2, 7, 7, 0),
    ]


def test_groups_are_sorted_and_totalled():
    a = GroupSnapshot("b-group", "Empty", {(T, 0): 1}, {})
    b = GroupSnapshot("a-group", "Stable", {(T, 0): 0, (T, 1): -1}, {})
    rows = all_rows([a, b], {(T, 0): 10, (T, 1): 4})
    assert [r.group for r in rows] == ["a-group", "a-group", "b-group"]
    summary = {t.group: t for t in totals([a, b], rows)}
    assert summary["a-group"].lag == 10
    assert summary["a-group"].unknown_partitions == 1
    assert summary["b-group"].lag == 9
    assert summary["b-group"].topics == (T,)


def test_table_uses_the_tools_column_names_and_dashes():
    text = format_rows([LagRow("g", T, 3, None, 12, None)])
    header, line = text.splitlines()
    assert header.split() == list(HEADERS)
    assert line.split() == ["g", T, "3", "-", "12", "-", "-", "-", "-"]


def test_json_rows_keep_nulls():
    parsed = json.loads(rows_json([LagRow("g", T, 0, 1, 2, 1)]))
    assert parsed == [
        {
            "group": "g",
            "topic": T,
            "partition": 0,
            "current_offset": 1,
            "log_end_offset": 2,
            "lag": 1,
            "consumer_id": None,
            "host": None,
            "client_id": None,
        }
    ]
