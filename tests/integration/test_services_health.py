"""Each service as its own process on the real engines: health, readiness, metrics, OpenAPI.

Readiness follows the engines: Kafka stopped -> 503 problem document, Kafka back -> 200.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from harness.devstack import ServiceProcess, free_port

pytestmark = pytest.mark.engines

SERVICES = ["entitlements", "connector", "importer", "categorizer"]


@pytest.fixture(scope="module")
def services(engines, log_dir) -> Iterator[dict[str, ServiceProcess]]:
    procs = {
        name: ServiceProcess(
            f"services.{name}",
            free_port(),
            engines.service_env(MONGODB_DATABASE=f"health_{name}", READINESS_TIMEOUT_S="1.5"),
            log_dir / f"health-{name}.log",
        )
        for name in SERVICES
    }
    try:
        for proc in procs.values():
            proc.start(wait_ready=False)
        for proc in procs.values():
            proc.wait_until("/readyz", 200)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("name", SERVICES)
def test_health_metrics_openapi(services, name):
    url = services[name].url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "service": name}
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["checks"] == {"kafka": "ok", "mongodb": "ok"}
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert "banksync_http_requests_total" in metrics.text
    spec = httpx.get(f"{url}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/healthz" in spec["paths"]
    assert "X-Correlation-ID" in httpx.get(f"{url}/healthz", headers={"X-Correlation-ID": "c-1"}).headers
    assert (
        httpx.get(f"{url}/healthz", headers={"X-Correlation-ID": "c-1"}).headers["X-Correlation-ID"] == "c-1"
    )


def test_readiness_follows_kafka(services, engines):
    if not engines.owned:
        pytest.skip("the engines are external: this test stops Kafka, which it may only do to its own")
    engines.stop_kafka()
    try:
        for proc in services.values():
            proc.wait_until("/readyz", 503, timeout=30)
            body = httpx.get(f"{proc.url}/readyz", timeout=10).json()
            assert body["code"] == "not_ready"
            assert body["checks"]["mongodb"] == "ok"
            assert body["checks"]["kafka"] != "ok"
            assert httpx.get(f"{proc.url}/healthz").status_code == 200
    finally:
        with contextlib.suppress(Exception):
            engines.start_kafka()
    for proc in services.values():
        proc.wait_until("/readyz", 200, timeout=60)
