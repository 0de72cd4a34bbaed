"""The second seed's asynchronous API: submit a file, poll its task, download the result.

The seed's routes answer with the seed's status codes, so its clients (its test suite, its web
page, its NixOS VM test) work unchanged: `POST /api/v1/transcribe` and `/translate` are 200,
`GET /api/v1/status?task_id=` and `/srt|vtt|txt?task_id=` are 400 for an unknown id (and the
downloads 400 until the task is finished). asrd's own resource routes keep REST codes:
`POST /api/v1/tasks` is 202 with a Location, `GET|DELETE /api/v1/tasks/{id}` and
`GET /api/v1/tasks/{id}/{srt,vtt,txt}` are 404 for an unknown id, 409 before the result.
Every route answers the same task JSON: asrd's fields and the seed's beside them.

A full queue is refused at once (429), never accepted and failed later; a bad language or a
file with no audio is a 400 before anything is queued.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from .. import __version__
from ..audio import AudioError, UnsupportedFormat
from ..auth import key_matches
from ..errors import ApiError
from ..formats import TEXT_CONTENT_TYPE, to_srt, to_text, to_vtt
from ..inputs import UrlNotAllowed, check_url_allowed
from ..languages import LANGUAGES
from ..logs import short_id
from ..tasks import QueueFull, Task, TaskStatus
from .common import check_task, parse_language, read_upload, ready_engine

router = APIRouter(prefix="/api/v1", tags=["task API"])

TASK_ID_DOC = "The id returned when the task was submitted"


def _queue(request: Request):
    return request.app.state.task_queue


Kind = Literal["transcribe", "translate"]


async def _submit(
    request: Request,
    kind: Kind,
    file: UploadFile,
    language: str | None,
    callback_url: str | None,
) -> tuple[Task, int]:
    if request.app.state.shutdown.active:  # it would only be failed with `shutting_down`
        message = "the server is shutting down; submit the task again shortly"
        raise ApiError(503, "shutting_down", message, headers={"Retry-After": "5"})
    engine = ready_engine(request)
    check_task(engine, kind)
    settings = engine.settings
    code = parse_language(engine, language)
    if callback_url:
        try:
            await check_url_allowed(callback_url, settings)
        except UrlNotAllowed as exc:
            raise ApiError(400, "invalid_callback_url", f"callback_url: {exc}") from None
    data = await read_upload(file, settings)
    try:
        await engine.probe(data)
    except AudioError as exc:
        code = "unsupported_format" if isinstance(exc, UnsupportedFormat) else "invalid_audio"
        raise ApiError(400, code, str(exc)) from None
    task = Task(
        type=kind,
        audio=data,
        language=code,
        file_name=file.filename,
        callback_url=callback_url,
        target_model=engine.model_id,
    )
    try:
        position = await _queue(request).submit(task)
    except QueueFull as exc:
        raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": "30"}) from None
    return task, position


_SUBMIT_DOC = {
    "language": "ISO 639-1 code (or English name) of the speech (also accepted as a query "
    "parameter, as the seed takes it); detected when absent",
    "callback_url": "An http(s) URL that gets the finished (or failed) task POSTed as JSON",
}
_SUBMIT_ERRORS = {
    400: {
        "description": "No audio in the file, an unknown language or one the model lacks, a "
        "translation on an English-only model, or a refused callback URL"
    },
    413: {"description": "Over MAX_UPLOAD_MB"},
    429: {
        "description": "The queue is full (MAX_TASK_QUEUE_SIZE or MAX_QUEUE_MB); see Retry-After"
    },
}
_SEED_SUBMIT_RESPONSES = {
    200: {"description": "Queued (the seed's code): the task, `status: pending`"},
    **_SUBMIT_ERRORS,
}


@router.post(
    "/transcribe",
    responses=_SEED_SUBMIT_RESPONSES,
    summary="Queue a file (the seed's route: 200; asrd's own is POST /api/v1/tasks)",
)
async def submit_transcription(
    request: Request,
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    task, position = await _submit(
        request, "transcribe", file, language or language_query, callback_url
    )
    return JSONResponse(task.to_json(position))


@router.post(
    "/translate",
    responses=_SEED_SUBMIT_RESPONSES,
    summary="Queue a file to translate into English (the seed's route: 200)",
)
async def submit_translation(
    request: Request,
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    task, position = await _submit(
        request, "translate", file, language or language_query, callback_url
    )
    return JSONResponse(task.to_json(position))


@router.post(
    "/tasks",
    status_code=202,
    responses={
        202: {"description": "Queued: the task, `status: pending`; `Location` is its URL"},
        **_SUBMIT_ERRORS,
    },
    summary="Queue a file to transcribe or translate",
)
async def create_task(
    request: Request,
    file: UploadFile = File(description="The audio file"),
    task: Kind = Form("transcribe", description="`transcribe`, or `translate` into English"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
) -> JSONResponse:
    created, position = await _submit(request, task, file, language, callback_url)
    return JSONResponse(
        created.to_json(position),
        status_code=202,
        headers={"Location": f"/api/v1/tasks/{created.id}"},
    )


_GONE = "no such task (unknown, cancelled or expired)"


async def _find(request: Request, task_id: str, status: int) -> tuple[Task, int | None]:
    """The task, or `status` (404 on asrd's routes, 400 on the seed's) if there is none."""
    found = await _queue(request).get(task_id)
    if found is None:
        raise ApiError(status, "task_not_found", _GONE)
    return found


async def _task_json(request: Request, task_id: str, status: int) -> JSONResponse:
    task, position = await _find(request, task_id, status)
    return JSONResponse(task.to_json(position))


_NOT_FOUND = {404: {"description": "No such task (unknown, cancelled or expired)"}}
_SEED_NOT_FOUND = {
    400: {"description": "No such task (unknown, cancelled or expired): the seed's code"}
}


@router.get(
    "/tasks/{task_id}",
    responses=_NOT_FOUND,
    summary="A task: its state, position, result or error",
)
async def get_task(request: Request, task_id: str) -> JSONResponse:
    return await _task_json(request, task_id, 404)


@router.get(
    "/status",
    responses=_SEED_NOT_FOUND,
    summary="A task (the seed's form of GET /api/v1/tasks/{task_id}; 400 if unknown)",
)
async def get_status(
    request: Request, task_id: str = Query(description=TASK_ID_DOC)
) -> JSONResponse:
    return await _task_json(request, task_id, 400)


@router.delete(
    "/tasks/{task_id}",
    responses=_NOT_FOUND,
    summary="Cancel a pending or running task, or drop a result",
)
async def delete_task(request: Request, task_id: str) -> JSONResponse:
    task = await _queue(request).remove(task_id)
    if task is None:
        raise ApiError(404, "task_not_found", _GONE)
    action = "deleted" if task.done else "cancelled"
    return JSONResponse({"task_id": task_id, "status": action})


Format = Literal["txt", "srt", "vtt"]
_RENDER = {
    "txt": to_text,
    "srt": lambda t: to_srt(t.segments),
    "vtt": lambda t: to_vtt(t.segments),
}


async def _download(
    request: Request, task_id: str, extension: Format, *, missing: int, unfinished: int
) -> Response:
    task, _ = await _find(request, task_id, missing)
    if task.status is not TaskStatus.FINISHED or task.transcript is None:
        raise ApiError(
            unfinished,
            "task_not_finished",
            f"the task is {task.status}, there is no result to download",
        )
    transcript = task.transcript
    stem = Path(task.file_name or "transcript").stem or "transcript"
    return PlainTextResponse(
        _RENDER[extension](transcript),
        media_type=TEXT_CONTENT_TYPE,
        headers={"Content-Disposition": attachment(f"{stem}_{transcript.language}.{extension}")},
    )


def attachment(name: str) -> str:
    """A Content-Disposition for downloading `name` (RFC 6266): a printable-ASCII `filename`
    for old clients and the exact name, UTF-8 percent-encoded, in `filename*` (RFC 5987).
    Control characters are dropped: in a header they would break the response."""
    name = "".join(c for c in name if c.isprintable()) or "download"
    # `"` and `\\` would end or escape the quoted string, and some clients percent-decode it.
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


_TEXT_BODY = {200: {"content": {TEXT_CONTENT_TYPE.split(";")[0]: {}}}}
_SEED_DOWNLOAD_ERRORS = {
    **_TEXT_BODY,
    400: {
        "description": "No such task, or it has not finished (or failed): no result yet "
        "(the seed's code for both; the error's `code` tells them apart)"
    },
}
_DOWNLOAD_ERRORS = {
    **_TEXT_BODY,
    **_NOT_FOUND,
    409: {"description": "The task has not finished (or failed): no result yet"},
}


@router.get(
    "/tasks/{task_id}/{fmt}",
    response_class=PlainTextResponse,
    responses=_DOWNLOAD_ERRORS,
    summary="Download a finished task's text, SubRip or WebVTT subtitles",
)
async def download_task(request: Request, task_id: str, fmt: Format) -> Response:
    return await _download(request, task_id, fmt, missing=404, unfinished=409)


async def _seed_download(request: Request, task_id: str, fmt: Format) -> Response:
    return await _download(request, task_id, fmt, missing=400, unfinished=400)


@router.get(
    "/txt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's text",
)
async def download_txt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _seed_download(request, task_id, "txt")


@router.get(
    "/srt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's subtitles (SubRip)",
)
async def download_srt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _seed_download(request, task_id, "srt")


@router.get(
    "/vtt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's subtitles (WebVTT)",
)
async def download_vtt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _seed_download(request, task_id, "vtt")


# --- the model and the server -------------------------------------------------------------


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@router.get("/decoder_status", summary="Model, device, loaded or not, what it can do, queue")
async def decoder_status(request: Request) -> JSONResponse:
    """Live (asrd has no decoder process to ask), so `received_at` is always now. The seed's
    fields (`gpu_mode`, `max_model_to_use`, `last_loaded_model_size`, `is_model_loaded`,
    `tasks_in_queue`, `currently_busy`, `received_at`) are beside asrd's; `multilingual`,
    `tasks` and `languages` say what the model can do: an English-only model (`*.en`)
    transcribes English only and can't translate."""
    engine = request.app.state.engine
    counts = await _queue(request).counts()
    worker = request.app.state.task_worker
    multilingual = engine.multilingual
    return JSONResponse(
        {
            "model": engine.model_id,
            "device": engine.device.device,
            "compute_type": engine.device.compute_type,
            "state": str(engine.state),
            "model_loaded": engine.loaded,
            "multilingual": multilingual,
            "english_only": not multilingual,
            "tasks": ["transcribe", "translate"] if multilingual else ["transcribe"],
            "languages": sorted(LANGUAGES) if multilingual else ["en"],
            "tasks_in_queue": counts["pending"],
            "tasks_processing": counts["processing"],
            "results_kept": counts["finished"] + counts["failed"],
            "max_task_queue_size": engine.settings.max_task_queue_size,
            "currently_busy": engine.busy,
            "current_task": short_id(worker.current.id) if worker.current else None,
            # The seed's names.
            "is_model_loaded": engine.loaded,
            "gpu_mode": engine.device.device == "cuda",
            "max_model_to_use": engine.model_id,
            "last_loaded_model_size": engine.model_id if engine.loaded_once else None,
            "received_at": _iso_now(),
        }
    )


REFRESH_ANSWER = "Request to refresh state is sent to decoder"


@router.get(
    "/decoder_status_refresh",
    summary="The seed's request for a fresh decoder_status (asrd's is always fresh)",
)
async def decoder_status_refresh() -> str:
    """The seed's decoder pushed its state now and then and this asked it for a new one; asrd's
    `decoder_status` is read live on every call, so there is nothing to refresh. Answers the
    seed's string, so its clients see what they expect."""
    return REFRESH_ANSWER


@router.get("/version", summary="asrd's version")
async def version() -> dict:
    return {"version": __version__}


# --- behind an authenticating proxy (oauth2-proxy) ---------------------------------------------

# Who the proxy says the user is, in the names oauth2-proxy sends upstream (`--pass-user-headers`)
# and those an nginx `auth_request` set-up passes on (the seed's `X-Email`, `X-User`).
_USER_HEADERS = {
    "user": ("x-forwarded-user", "x-user"),
    "email": ("x-forwarded-email", "x-email"),
    "preferred_username": ("x-forwarded-preferred-username",),
}


@router.get(
    "/userinfo",
    summary="Who the authenticating proxy says the user is (only from TRUSTED_PROXIES)",
)
async def userinfo(request: Request) -> dict:
    """The user an authenticating reverse proxy (oauth2-proxy, or nginx with `auth_request`)
    names in its headers: `user` (`X-Forwarded-User`, or `X-User`), `email`
    (`X-Forwarded-Email`, or `X-Email`), `preferred_username`
    (`X-Forwarded-Preferred-Username`), believed only when the request comes from a proxy in
    TRUSTED_PROXIES (its TCP address; no header proves it): from anyone else they are null and
    `authenticated` is false. `user_agent` is the request's own."""
    trusted = _from_trusted_proxy(request)
    info: dict[str, str | bool | None] = {}
    for field, names in _USER_HEADERS.items():
        values = (request.headers.get(name, "").strip() for name in names)
        info[field] = next((value for value in values if value), None) if trusted else None
    info["authenticated"] = trusted and any(info.values())
    info["user_agent"] = request.headers.get("user-agent")
    return info


def safe_redirect(target: str | None) -> str:
    """`target` if it is a path on this server (`/...`), else `/`: never another site. Refused:
    absolute URLs, scheme-relative `//host`, backslashes (`/\\host` is `//host` to a browser),
    and whitespace or control characters (browsers drop tabs and newlines, `/\\t/host`)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(c.isspace() or not c.isprintable() for c in target)
    ):
        return "/"
    return target


@router.get(
    "/login",
    response_class=RedirectResponse,
    status_code=307,
    responses={307: {"description": "To `redirect` if it is a path on this server, else to `/`"}},
    summary="The seed's login hop: the proxy authenticates, asrd redirects (same site only)",
)
async def login(
    redirect: str | None = Query(
        None, description="Where to go after logging in: a path on this server, e.g. `/`"
    ),
) -> RedirectResponse:
    """Behind oauth2-proxy this path is protected, so reaching it means the user has logged in
    (the proxy has set its session cookie); asrd then sends the browser on to `redirect`. Only
    a path on this server is followed (an open redirect would lend asrd's name to phishing
    links): anything else, or none, goes to the web page, `/`."""
    return RedirectResponse(safe_redirect(redirect), status_code=307)


# --- logs, for admins only -----------------------------------------------------------------


def require_admin(request: Request) -> None:
    """Admin: an ADMIN_API_KEYS key, or an AUTHORIZED_MAILS `X-Email` set by a proxy in
    TRUSTED_PROXIES. The proxy check is on the TCP peer, so `Host`, `X-Forwarded-For` and the
    like prove nothing."""
    settings = request.app.state.settings
    authorization = request.headers.get("authorization", "")
    key = request.headers.get("x-api-key") or (
        authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    )
    if key_matches(key, settings.admin_api_keys):
        return
    email = request.headers.get("x-email", "").strip().lower()
    if email and email in settings.authorized_mails and _from_trusted_proxy(request):
        return
    if not key and not email:
        raise ApiError(401, "unauthorized", "admin credentials required")
    raise ApiError(403, "forbidden", "not allowed")


def _from_trusted_proxy(request: Request) -> bool:
    peer = request.client.host if request.client else None
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    networks = request.app.state.settings.trusted_proxies
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


@router.get(
    "/logs",
    summary="Zip of the log files (admins only)",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}},
        401: {"description": "No admin credentials"},
        403: {"description": "Credentials that are not an admin's"},
        404: {"description": "File logging is off (LOG_DIR is not set)"},
    },
)
async def download_logs(request: Request) -> Response:
    require_admin(request)
    settings = request.app.state.settings
    if settings.log_dir is None:
        raise ApiError(404, "no_log_files", "file logging is off (LOG_DIR is not set)")
    archive = await asyncio.to_thread(_zip_logs, settings.log_dir, settings.log_file)
    return Response(
        archive,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="asrd-logs.zip"'},
    )


def _zip_logs(log_dir: Path, log_file: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(log_dir.glob(f"{log_file}*")):
            if path.is_file():
                archive.write(path, path.name)
    return buffer.getvalue()
