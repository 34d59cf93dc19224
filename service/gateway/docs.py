"""`/docs` (Swagger UI) and `/redoc` with no network: their scripts, stylesheet and icon
are those fastapi-offline ships, served from the installed package under /static/docs.
The two pages are plain routes, as FastAPI's own are: any valid token (or the dashboard's
session cookie, service.gateway.auth) opens them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/static/docs"
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")
"""The pages' Content-Security-Policy: the browser fetches nothing from another site, should
a bundle name one. Inline: the pages' own start-up script."""


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


REDOC_BUNDLE = "redoc.standalone.js"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # the "API docs by Redocly" footer's image


@lru_cache(maxsize=1)
def _redoc_bundle() -> bytes:
    """ReDoc's bundle with its one CDN reference pointed at the local icon."""
    return (ASSETS_DIR / REDOC_BUNDLE).read_bytes().replace(REDOC_LOGO.encode(), f"{ASSETS_URL}/favicon.png".encode())


async def _redoc_script(request: Request) -> Response:  # noqa: ARG001
    return Response(_redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the docs pages to an app made with docs_url=None and redoc_url=None."""
    app.add_route(f"{ASSETS_URL}/{REDOC_BUNDLE}", _redoc_script, include_in_schema=False)  # before the mount
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    oauth2_redirect = f"{docs_url}/oauth2-redirect"

    def root(request: Request) -> str:
        return request.scope.get("root_path", "")

    async def swagger(request: Request) -> HTMLResponse:
        base = root(request)
        return _local_only(get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}{oauth2_redirect}",
            swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters))

    async def swagger_redirect(request: Request) -> HTMLResponse:  # noqa: ARG001
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return _local_only(get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png", with_google_fonts=False))

    app.add_route(docs_url, swagger, include_in_schema=False)
    app.add_route(oauth2_redirect, swagger_redirect, include_in_schema=False)
    app.add_route(redoc_url, redoc, include_in_schema=False)
