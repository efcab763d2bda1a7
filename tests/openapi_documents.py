"""The OpenAPI document each service's app builds, read at collection time (no engines needed).

Tests that are parametrised by route need the routes before any service runs; building each app in a
subprocess keeps its logging set-up out of the test process. The tests then check that the running
services serve these same documents.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any

from shared.devstack import ROOT

SERVICES = ("entitlements", "connector", "importer", "categorizer")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

_DUMP = """
import importlib, json, sys
out = {"documents": {}, "routes": {}}
for name in sys.argv[1:]:
    app = importlib.import_module(f"services.{name}.app").create_app()
    out["documents"][name] = app.openapi()
    out["routes"][name] = sorted(
        [method, route.path] for route in app.routes for method in getattr(route, "methods", None) or ()
    )
sys.stdout.write("\\nOPENAPI " + json.dumps(out) + "\\n")
"""


def built_documents() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = _built()["documents"]
    return documents


def built_routes() -> dict[str, list[tuple[str, str]]]:
    """(METHOD, path) of every route each app serves, in its OpenAPI document or not (HEAD left out)."""
    routes: dict[str, list[list[str]]] = _built()["routes"]
    return {name: [(m, p) for m, p in pairs if m != "HEAD"] for name, pairs in routes.items()}


@functools.cache
def _built() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, *SERVICES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("OPENAPI "))
    built: dict[str, Any] = json.loads(line.removeprefix("OPENAPI "))
    return built


def routes_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation of an OpenAPI document."""
    return sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    )
