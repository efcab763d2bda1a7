"""Prometheus metrics every service exposes on /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "banksync_http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "banksync_http_request_duration_seconds", "HTTP request handling time", ["service", "method", "route"]
)
EVENTS_PUBLISHED = Counter("banksync_events_published_total", "CloudEvents published", ["service", "topic"])
EVENTS_CONSUMED = Counter(
    "banksync_events_consumed_total", "Records consumed, by outcome", ["service", "topic", "outcome"]
)
HANDLER_LATENCY = Histogram(
    "banksync_handler_duration_seconds", "Event handler processing time", ["service", "topic"]
)
ERRORS = Counter(
    "banksync_errors_total",
    "Errors by stable code: problem answers (HTTP), dead-lettered records, failed syncs",
    ["service", "kind", "code"],
)
CONSUMER_LAG = Gauge(
    "banksync_consumer_lag",
    "Records not yet committed by the service's consumer group (log end offset - committed offset)",
    ["service", "group", "topic", "partition"],
)
NIGHT_UNFINISHED = Gauge(
    "banksync_nightly_unfinished_connections",
    "Connections whose nightly sync was still queued or running when the night's window closed",
)
NIGHT_OVERRUNS = Counter("banksync_nightly_overruns_total", "Nights not finished inside their window")
SHREDDED_RECORDS = Counter(
    "banksync_shredded_records_total",
    "Records of erased users: sealed records skipped because their key is gone, or events not written",
    ["service", "topic", "outcome"],
)
