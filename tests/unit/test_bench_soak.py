"""The soak's judgement (bench/soak.py): quarters, trends, the reconciliation of booked lines, and the
reading of /proc's TCP tables. Pure functions on made-up series; the soak itself runs in `make soak`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import bench.suite  # noqa: F401  (the benchmarks registered in their order, as `python -m bench` does)

# isort: split
from bench.soak import (
    CONNECTION_SLACK,
    RSS_GROWTH_LIMIT_PCT,
    Peers,
    descriptors,
    established_connections,
    floor_trend,
    memory_trend,
    port_of,
    quarter,
    reconcile,
    resident_mb,
    sample_table,
    slope_per_hour,
)


def test_quarters_split_the_span_and_the_last_one_keeps_its_end() -> None:
    series = [(float(t), float(t)) for t in range(0, 101, 10)]
    assert quarter(series, 0, 100, 0) == [0.0, 10.0, 20.0]
    assert quarter(series, 0, 100, 1) == [30.0, 40.0]
    assert quarter(series, 0, 100, 3) == [80.0, 90.0, 100.0]


def test_flat_memory_with_noise_passes_and_a_steady_leak_fails() -> None:
    noisy = [(float(t), 100.0 + (3 if t % 40 == 0 else 0)) for t in range(0, 1201, 20)]
    flat = memory_trend(noisy, 0, 1200)
    assert flat["flat"] is True
    assert abs(flat["growth_mb"]) <= 3  # within the noise
    # 30 MB over 20 minutes on 100 MB: 14% between the quarters' medians (111 → 126 MB), 90 MB an hour
    leaking = [(float(t), 100.0 + t / 40) for t in range(0, 1201, 20)]
    leak = memory_trend(leaking, 0, 1200)
    assert leak["growth_pct"] > RSS_GROWTH_LIMIT_PCT
    assert leak["flat"] is False
    assert leak["slope_mb_per_h"] == pytest.approx(90, abs=0.01)


def test_a_trend_needs_samples_in_both_quarters() -> None:
    assert memory_trend([(10.0, 100.0)], 0, 100)["flat"] is None
    assert floor_trend([(10.0, 5.0)], 0, 100)["flat"] is None
    assert slope_per_hour([(10.0, 1.0)], 0, 100) is None


def test_pools_moving_with_traffic_are_flat_a_rising_floor_is_not() -> None:
    # busy nights up to 40 connections, idle between them at 20
    pooled = [(float(t), 40.0 if t % 60 < 20 else 20.0) for t in range(0, 1200, 10)]
    assert floor_trend(pooled, 0, 1200)["flat"] is True
    # one connection left open every minute
    leaking = [(float(t), (40.0 if t % 60 < 20 else 20.0) + t // 60) for t in range(0, 1200, 10)]
    found = floor_trend(leaking, 0, 1200)
    assert found["q4_min"] - found["q2_min"] > CONNECTION_SLACK
    assert found["flat"] is False


def test_reconcile_counts_missing_duplicated_extra_and_uncategorised_lines() -> None:
    booked = {"1": "u1", "2": "u1", "3": "u2", "4": "u2"}
    operations: list[dict[str, Any]] = [
        {"user_id": "u1", "aggregator_transaction_id": "1", "categorized_at": "t"},
        {"user_id": "u1", "aggregator_transaction_id": "2", "categorized_at": None},
        {"user_id": "u2", "aggregator_transaction_id": "3", "categorized_at": "t"},
        {"user_id": "u2", "aggregator_transaction_id": "3", "categorized_at": "t"},
        {"user_id": "u2", "aggregator_transaction_id": "9", "categorized_at": "t"},
    ]
    assert reconcile(booked, operations) == {
        "booked": 4,
        "operations": 5,
        "missing": 1,  # 4
        "duplicates": 1,  # 3 twice
        "extra": 1,  # 9
        "uncategorised": 1,  # 2
    }
    exact: list[dict[str, Any]] = [
        {"user_id": u, "aggregator_transaction_id": t, "categorized_at": "t"} for t, u in booked.items()
    ]
    assert reconcile(booked, exact) == {
        "booked": 4,
        "operations": 4,
        "missing": 0,
        "duplicates": 0,
        "extra": 0,
        "uncategorised": 0,
    }


def test_tcp_tables_give_the_ports_of_established_connections_only(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1\n"
        "   1: 0100007F:D431 0100007F:2384 01 00000000:00000000 00:00000000 00000000  1000        0 222 1\n"
        "   2: 0100007F:D432 0100007F:2384 06 00000000:00000000 00:00000000 00000000  1000        0 0 1\n"
    )
    assert established_connections([str(table), str(tmp_path / "absent")]) == {222: (0xD431, 0x2384)}


def test_peers_are_named_by_ports() -> None:
    peers = Peers(kafka=9092, mongodb=27017, services={8001: "sandbox", 8002: "connector"})
    assert peers.of(8002, 50000, 9092) == "kafka"
    assert peers.of(8002, 50001, 27017) == "mongodb"
    assert peers.of(8002, 8002, 50002) == "http_in"
    assert peers.of(8002, 50003, 8001) == "http_out"
    assert peers.of(8002, 50004, 4000) == "other"
    assert port_of("127.0.0.1:9092") == 9092
    assert port_of("mongodb://127.0.0.1:27017") == 27017
    assert port_of("mongodb://127.0.0.1:27017/") == 27017


def test_this_process_can_be_sampled() -> None:
    rss = resident_mb(os.getpid())
    opened = descriptors(os.getpid())
    assert rss is not None
    assert rss > 1
    assert opened is not None
    assert opened[0] >= 3
    assert resident_mb(2**22 + 7) is None  # above Linux's pid_max: no such process
    assert descriptors(2**22 + 7) is None


def test_the_connection_slack_grows_with_the_floor() -> None:
    def floor_from(start: float, rise: float) -> list[tuple[float, float]]:
        # the rise in the last quarter only
        return [(float(t), start if t < 900 else start + rise) for t in range(0, 1200, 10)]

    assert floor_trend(floor_from(100, 10), 0, 1200)["flat"] is True  # 10% of 100
    assert floor_trend(floor_from(100, 11), 0, 1200)["flat"] is False
    assert floor_trend(floor_from(10, 3), 0, 1200)["flat"] is True  # at least CONNECTION_SLACK
    assert floor_trend(floor_from(10, 4), 0, 1200)["flat"] is False


def test_the_time_series_is_one_line_a_sample_with_named_columns() -> None:
    sample = {
        "t": 20.5,
        "lag": 3,
        "gap": 0,
        "load": 1.25,
        "rss_mb": {"importer": 90.1, "importer-2": None},
        "fds": {"importer": 36, "importer-2": None},
        "sockets": {"importer": 24},
        "tcp": {"importer": 22},
    }
    table = sample_table([sample], ["importer", "importer-2"])
    assert table["columns"][:6] == ["t", "lag", "gap", "load", "rss_mb:importer", "rss_mb:importer-2"]
    assert table["rows"] == ["20.5 3 0 1.25 90.1 - 36 - 24 - 22 -"]
    assert len(table["columns"]) == len(table["rows"][0].split())


def test_a_pool_that_filled_up_to_its_cap_and_stayed_there_is_flat() -> None:
    # 90 connections, then 101 from the third quarter on (a pool that reached its cap)
    filled = [(float(t), 90.0 if t < 600 else 101.0) for t in range(0, 1200, 10)]
    found = floor_trend(filled, 0, 1200)
    assert (found["q2_min"], found["q3_min"], found["q4_min"]) == (90, 101, 101)
    assert found["flat"] is True
    # still filling in the last quarter: not flat
    filling = [(float(t), 90.0 + max(0, t - 600) // 30) for t in range(0, 1200, 10)]
    assert floor_trend(filling, 0, 1200)["flat"] is False
