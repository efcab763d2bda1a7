"""`/docs` of every service, the sandbox and the dashboard works without Internet (shared.docs).

Each app runs in its own process (as `make up` runs it, but without its lifespan: the docs need no
engine), and the test reads its `/docs` page as a browser would: every script, style and icon it names
must be on the same server and answer 200. Headless Chromium, where installed, then renders the page on
this machine, which reaches no CDN: the operations of the OpenAPI document must show.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from harness.devstack import ROOT, ensure_dir, free_port
from harness.waiting import wait_for
from tests.integration.test_ops_dashboard import CHROMIUM, chromium_page

APPS = {
    "entitlements": "services.entitlements.app:create_app",
    "connector": "services.connector.app:create_app",
    "importer": "services.importer.app:create_app",
    "categorizer": "services.categorizer.app:create_app",
    "sandbox": "sandbox.app:create_app",
    "dashboard": "ops.dashboard.app:create_app",
}
SERVE = """
import importlib, sys, uvicorn
module, factory = sys.argv[1].split(":")
make = getattr(importlib.import_module(module), factory)
app = make("127.0.0.1:1", follow=False) if module == "ops.dashboard.app" else make()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), lifespan="off", log_level="warning")
"""
ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    logs = ensure_dir(ROOT / ".run" / "test-logs")
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, target in APPS.items():
            port = free_port()
            with (logs / f"docs-{name}-{port}.log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", SERVE, target, str(port)], cwd=ROOT, stdout=log, stderr=log
                )
            started[name] = (process, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60  # for them all

        def answered(name: str, process: subprocess.Popen[bytes], url: str) -> bool:
            assert process.poll() is None, f"{name} exited at start"
            try:
                return httpx.get(url + "/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        for name, (process, url) in started.items():
            wait_for(
                lambda n=name, p=process, u=url: answered(n, p, u),
                max(0.0, deadline - time.monotonic()),
                f"{name} answering",
                0.2,
            )
        yield {name: url for name, (_, url) in started.items()}
    finally:
        for process, _ in started.values():
            process.terminate()
        for process, _ in started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.mark.parametrize("name", list(APPS))
def test_docs_reference_no_external_host_and_their_assets_answer(servers, name):
    base = servers[name]
    with httpx.Client(base_url=base, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+", page.text.replace("http-equiv", "")), (
            "the page names another host"
        )
        links = Links()
        links.feed(page.text)
        openapi = re.search(r"url: '([^']+)'", page.text)
        assert openapi is not None
        assets = [*links.urls, openapi.group(1)]
        assert len(assets) >= 4  # css, icon, script, the OpenAPI document
        for asset in assets:
            url = urljoin(base + "/docs", asset)
            assert urlsplit(url).netloc == urlsplit(base).netloc, asset
            answer = http.get(url)
            assert answer.status_code == 200, asset
            assert answer.content, asset
            expected = ASSET_TYPES.get(Path(urlsplit(url).path).suffix, "json")
            assert expected in answer.headers["content-type"], (asset, answer.headers["content-type"])
        # FastAPI's CDN pages are gone, and the package's demo page is not served
        assert http.get("/redoc").status_code == 404
        assert http.get("/docs/assets/index.html").status_code == 404
        assert http.get("/docs/assets/swagger-initializer.js").status_code == 404


async def test_swagger_ui_renders_without_internet(servers, tmp_path):
    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install -y chromium): the browser test needs it"
        )
    base = servers["importer"]
    async with chromium_page(base + "/docs", tmp_path / "profile") as page:
        title = await page.wait_for(
            "document.querySelector('.swagger-ui .info .title')"
            " && document.querySelectorAll('.opblock').length > 5"
            " && document.querySelector('.swagger-ui .info .title').textContent"
        )
        assert "banksync importer" in title
        fetched = json.loads(
            await page.eval("JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))")
        )
    assert fetched, "the page fetched nothing"
    assert all(url.startswith(base + "/") for url in fetched), fetched
