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
out = {}
for name in sys.argv[1:]:
    out[name] = importlib.import_module(f"services.{name}.app").create_app().openapi()
sys.stdout.write("\\nOPENAPI " + json.dumps(out) + "\\n")
"""


@functools.cache
def built_documents() -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, *SERVICES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("OPENAPI "))
    documents: dict[str, dict[str, Any]] = json.loads(line.removeprefix("OPENAPI "))
    return documents


def routes_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation of an OpenAPI document."""
    return sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    )
