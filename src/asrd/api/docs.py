"""Interactive API documentation that works offline: `/docs` (Swagger UI) and `/redoc`.

FastAPI's own pages load their scripts and styles from a CDN (and Redoc a Google web font),
so they stay blank on a machine without internet. Here the same pages load Swagger UI and
Redoc from the `fastapi-offline` package's copy of their distributions, served by asrd under
`/docs-assets`: nothing leaves the server. Redoc's bundle would still fetch its maker's logo
from a CDN for its menu's footer: asrd serves it with that image's address emptied (Redoc
then leaves the image out).
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = resources.files("fastapi_offline") / "static"
ASSETS_URL = "/docs-assets"
SWAGGER_JS, SWAGGER_CSS = "swagger-ui-bundle.js", "swagger-ui.css"
REDOC_JS, FAVICON = "redoc.standalone.js", "favicon.png"

REDOC_LOGO = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'

router = APIRouter(include_in_schema=False)


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_asset(request, SWAGGER_JS),
        swagger_css_url=_asset(request, SWAGGER_CSS),
        swagger_favicon_url=_asset(request, FAVICON),
        # No badge fetched from swagger.io's validator.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset(request, REDOC_JS),
        redoc_favicon_url=_asset(request, FAVICON),
        with_google_fonts=False,
    )


@functools.cache
def _redoc_bundle() -> bytes:
    return (ASSETS / REDOC_JS).read_bytes().replace(REDOC_LOGO, b'""')


@router.get(f"{ASSETS_URL}/{REDOC_JS}")
async def redoc_bundle() -> Response:
    return Response(
        _redoc_bundle(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


def install(app: FastAPI) -> None:
    """The two pages and their assets (the app is created with docs_url=redoc_url=None)."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")
