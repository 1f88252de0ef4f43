"""The service's API pages, /docs (Swagger UI) and /redoc (ReDoc), served with no network: FastAPI's own pages load
their JavaScript and CSS from a CDN and stay blank on a host without internet access.

The assets come from the fastapi-offline package (pinned in requirements.txt), which ships Swagger UI's and ReDoc's
bundles; they are mounted under /docs-static and FastAPI's own page builders point at them. Call it on an app made
with docs_url=None and redoc_url=None (FastAPI's CDN pages off):

    app = FastAPI(..., docs_url=None, redoc_url=None)
    offline_docs(app)
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
STATIC_URL = "/docs-static"


def offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> FastAPI:
    """Add /docs and /redoc pages whose every asset the app serves itself; returns the app."""
    if app.docs_url or app.redoc_url:
        raise ValueError("offline_docs: make the app with docs_url=None and redoc_url=None, or FastAPI's CDN pages "
                         "answer first")
    if not (ASSETS / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"{ASSETS}: no Swagger UI bundle; reinstall fastapi-offline (requirements.txt)")
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-static")
    # Swagger UI sends the spec to an online validator for a badge unless told not to: nothing leaves the host
    parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that serves the app under a path prefix
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                                   swagger_ui_parameters=parameters)

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)

    return app
