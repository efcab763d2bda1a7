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

from harness.devstack import ROOT, Stack

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


def one_of_everything(stack: Stack, user: str) -> dict[str, str]:
    """Makes `user` own one of everything a path can name (a linked bank, an account, an operation, a
    payee) and returns the ids to put in the paths."""
    stack.entitle(user)
    connection = stack.link_bank(user)
    stack.select_all(user, connection)
    with stack.client("importer", user) as importer:
        account = importer.post(f"/v1/users/{user}/accounts", json={"name": "Compte joint"})
        assert account.status_code == 201, account.text
        account_id = account.json()["account_id"]
        operation = importer.post(
            f"/v1/users/{user}/accounts/{account_id}/operations",
            json={"date": "2025-03-01", "amount": "-12.30", "currency": "EUR", "label": "Boulangerie"},
        )
        assert operation.status_code == 201, operation.text
    with stack.client("categorizer", user) as categorizer:
        payee = categorizer.post(
            f"/v1/users/{user}/payees",
            json={"name": "Boulangerie Paul", "category": "alimentation", "keywords": ["paul"]},
        )
        assert payee.status_code == 201, payee.text
    return {
        "connection_id": connection["connection_id"],
        "aggregator_account_id": connection["accounts"][0]["aggregator_account_id"],
        "account_id": account_id,
        "operation_id": operation.json()["id"],
        "payee_id": payee.json()["id"],
    }
