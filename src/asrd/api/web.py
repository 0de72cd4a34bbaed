"""The web page: `/` and its static files (no build step, no CDN: works offline).

The second seed served its page as `/index.html`, `/script.js` and `/styles.css`; those names
serve asrd's page and its assets too, so links and checks made for the seed keep working."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = resources.files("asrd") / "web" / "static"

router = APIRouter(include_in_schema=False)

# The seed's names -> asrd's file and its type (set here, not guessed from the system's MIME
# table, which differs between Python versions for `.js`).
SEED_ALIASES = {
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/script.js": ("app.js", "text/javascript; charset=utf-8"),
    "/styles.css": ("style.css", "text/css; charset=utf-8"),
}


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(
        str(STATIC / name), media_type=media_type, headers={"Cache-Control": "no-cache"}
    )


@router.get("/")
async def index() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8")


def _alias(name: str, media_type: str):
    async def serve() -> FileResponse:
        return _file(name, media_type)

    return serve


for _path, (_name, _type) in SEED_ALIASES.items():
    router.add_api_route(_path, _alias(_name, _type), methods=["GET"])


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
