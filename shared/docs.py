"""`/docs` (Swagger UI) served from the process itself, so that it works on a machine without Internet.

FastAPI's default page loads Swagger UI's JS and CSS from a CDN (and its favicon from fastapi's site).
Here they come from the pinned `swagger-ui-bundle-v2` package (Swagger UI's own dist files), mounted at
`/docs/assets`. Only the files the page uses are served (the package also ships a demo page pointing at
the public Petstore). ReDoc has no offline copy here: `/redoc` is not served.

    app = FastAPI(..., docs_url=None, redoc_url=None)
    serve_docs_locally(app)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
ASSETS = frozenset(
    {
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "swagger-ui.css",
        "swagger-ui.css.map",
        "favicon-32x32.png",
    }
)


def swagger_ui_dir() -> Path:
    """The folder of Swagger UI's dist files inside the installed package."""
    # imported by name: the package ships no type information (its one attribute is this path)
    return Path(importlib.import_module("swagger_ui_bundle").swagger_ui_path)


class _Assets(StaticFiles):
    """StaticFiles limited to `ASSETS`: anything else in the folder is a 404."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path not in ASSETS:
            return "", None
        return super().lookup_path(path)


def serve_docs_locally(app: FastAPI) -> None:
    """Registers `GET /docs` with local assets. The app must be built with `docs_url=None` and
    `redoc_url=None` (else FastAPI's CDN pages would be served first)."""
    if app.docs_url or app.redoc_url:
        raise ValueError("build the app with docs_url=None and redoc_url=None before serve_docs_locally")
    openapi_url = app.openapi_url
    if not openapi_url:
        return
    app.mount(ASSETS_URL, _Assets(directory=swagger_ui_dir()), name="swagger-ui-assets")
    title = f"{app.title} - Swagger UI"

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=title,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
            # no badge fetched from swagger.io's online validator
            swagger_ui_parameters={"validatorUrl": None},
        )

    # a plain route, as FastAPI registers its own pages: no app-wide dependencies, not in the OpenAPI
    app.add_route(DOCS_URL, docs, include_in_schema=False)
