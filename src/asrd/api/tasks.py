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
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from .. import __version__
from ..audio import AudioError, UnsupportedFormat
from ..errors import ApiError
from ..formats import TEXT_CONTENT_TYPE, render
from ..inputs import UrlNotAllowed, check_url_allowed
from ..logs import short_id
from ..slot import ModelSlot
from ..tasks import QueueFull, Task, TaskQueue, TaskStatus
from .admin import from_trusted_proxy, require_admin
from .common import check_task, model_slot, parse_language, read_upload
from .deps import AudioDep, ModelsDep, SettingsDep, ShutdownDep, TaskQueueDep, TaskWorkerDep

router = APIRouter(prefix="/api/v1", tags=["task API"])

TASK_ID_DOC = "The id returned when the task was submitted"


Kind = Literal["transcribe", "translate"]


@dataclass
class Submitter:
    """What queueing a task takes of the server."""

    models: ModelsDep
    audio: AudioDep
    settings: SettingsDep
    queue: TaskQueueDep
    shutdown: ShutdownDep


async def _submit(
    server: Submitter,
    kind: Kind,
    file: UploadFile,
    language: str | None,
    callback_url: str | None,
    model: str | None,
) -> tuple[Task, int]:
    if server.shutdown.active:  # it would only be failed with `shutting_down`
        message = "the server is shutting down; submit the task again shortly"
        raise ApiError(503, "shutting_down", message, headers={"Retry-After": "5"})
    slot = model_slot(server.models, model)
    check_task(slot, kind)
    settings = server.settings
    code = parse_language(slot, language)
    if callback_url:
        try:
            await check_url_allowed(callback_url, settings)
        except UrlNotAllowed as exc:
            raise ApiError(400, "invalid_callback_url", f"callback_url: {exc}") from None
    data = await read_upload(file, settings)
    try:
        await server.audio.probe(data)
    except AudioError as exc:
        code = "unsupported_format" if isinstance(exc, UnsupportedFormat) else "invalid_audio"
        raise ApiError(400, code, str(exc)) from None
    task = Task(
        type=kind,
        audio=data,
        language=code,
        file_name=file.filename,
        callback_url=callback_url,
        target_model=slot.public_id,
    )
    try:
        position = await server.queue.submit(task)
    except QueueFull as exc:
        raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": "30"}) from None
    return task, position


_SUBMIT_DOC = {
    "language": "ISO 639-1 code (or English name) of the speech (also accepted as a query "
    "parameter, as the seed takes it); detected when absent",
    "callback_url": "An http(s) URL that gets the finished (or failed) task POSTed as JSON",
    "model": "The model to use, of those served (GET /v1/models); default MODEL_ID",
}
_SUBMIT_ERRORS = {
    400: {
        "description": "No audio in the file, an unknown language or one the model lacks, a "
        "translation on an English-only model, or a refused callback URL"
    },
    404: {"description": "`model` is not a served model"},
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
    server: Annotated[Submitter, Depends()],
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    model: str | None = Form(None, description=_SUBMIT_DOC["model"], max_length=512),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    task, position = await _submit(
        server, "transcribe", file, language or language_query, callback_url, model
    )
    return JSONResponse(task.to_json(position))


@router.post(
    "/translate",
    responses=_SEED_SUBMIT_RESPONSES,
    summary="Queue a file to translate into English (the seed's route: 200)",
)
async def submit_translation(
    server: Annotated[Submitter, Depends()],
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    model: str | None = Form(None, description=_SUBMIT_DOC["model"], max_length=512),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    task, position = await _submit(
        server, "translate", file, language or language_query, callback_url, model
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
    server: Annotated[Submitter, Depends()],
    file: UploadFile = File(description="The audio file"),
    task: Kind = Form("transcribe", description="`transcribe`, or `translate` into English"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    model: str | None = Form(None, description=_SUBMIT_DOC["model"], max_length=512),
) -> JSONResponse:
    created, position = await _submit(server, task, file, language, callback_url, model)
    return JSONResponse(
        created.to_json(position),
        status_code=202,
        headers={"Location": f"/api/v1/tasks/{created.id}"},
    )


_GONE = "no such task (unknown, cancelled or expired)"


async def _find(queue: TaskQueue, task_id: str, status: int) -> tuple[Task, int | None]:
    """The task, or `status` (404 on asrd's routes, 400 on the seed's) if there is none."""
    found = await queue.get(task_id)
    if found is None:
        raise ApiError(status, "task_not_found", _GONE)
    return found


async def _task_json(queue: TaskQueue, task_id: str, status: int) -> JSONResponse:
    task, position = await _find(queue, task_id, status)
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
async def get_task(queue: TaskQueueDep, task_id: str) -> JSONResponse:
    return await _task_json(queue, task_id, 404)


@router.get(
    "/status",
    responses=_SEED_NOT_FOUND,
    summary="A task (the seed's form of GET /api/v1/tasks/{task_id}; 400 if unknown)",
)
async def get_status(
    queue: TaskQueueDep, task_id: str = Query(description=TASK_ID_DOC)
) -> JSONResponse:
    return await _task_json(queue, task_id, 400)


@router.delete(
    "/tasks/{task_id}",
    responses=_NOT_FOUND,
    summary="Cancel a pending or running task, or drop a result",
)
async def delete_task(queue: TaskQueueDep, task_id: str) -> JSONResponse:
    task = await queue.remove(task_id)
    if task is None:
        raise ApiError(404, "task_not_found", _GONE)
    action = "deleted" if task.done else "cancelled"
    return JSONResponse({"task_id": task_id, "status": action})


Format = Literal["txt", "srt", "vtt"]


async def _download(
    queue: TaskQueue, task_id: str, extension: Format, *, missing: int, unfinished: int
) -> Response:
    task, _ = await _find(queue, task_id, missing)
    if task.status is not TaskStatus.FINISHED or task.transcript is None:
        raise ApiError(
            unfinished,
            "task_not_finished",
            f"the task is {task.status}, there is no result to download",
        )
    transcript = task.transcript
    stem = Path(task.file_name or "transcript").stem or "transcript"
    return PlainTextResponse(
        render(transcript, "text" if extension == "txt" else extension),
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
async def download_task(queue: TaskQueueDep, task_id: str, fmt: Format) -> Response:
    return await _download(queue, task_id, fmt, missing=404, unfinished=409)


async def _seed_download(queue: TaskQueue, task_id: str, fmt: Format) -> Response:
    return await _download(queue, task_id, fmt, missing=400, unfinished=400)


@router.get(
    "/txt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's text",
)
async def download_txt(
    queue: TaskQueueDep, task_id: str = Query(description=TASK_ID_DOC)
) -> Response:
    return await _seed_download(queue, task_id, "txt")


@router.get(
    "/srt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's subtitles (SubRip)",
)
async def download_srt(
    queue: TaskQueueDep, task_id: str = Query(description=TASK_ID_DOC)
) -> Response:
    return await _seed_download(queue, task_id, "srt")


@router.get(
    "/vtt",
    response_class=PlainTextResponse,
    responses=_SEED_DOWNLOAD_ERRORS,
    summary="Download a finished task's subtitles (WebVTT)",
)
async def download_vtt(
    queue: TaskQueueDep, task_id: str = Query(description=TASK_ID_DOC)
) -> Response:
    return await _seed_download(queue, task_id, "vtt")


# --- the model and the server -------------------------------------------------------------


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def model_status(slot: ModelSlot) -> dict:
    """One model as `decoder_status` and `/api/ps` report it."""
    return {
        "model": slot.public_id,
        "default": slot.is_default,
        "device": slot.device.device,
        "compute_type": slot.device.compute_type,
        "state": str(slot.state),
        "model_loaded": slot.loaded,
        "multilingual": slot.multilingual,
        "english_only": not slot.multilingual,
        "tasks": slot.tasks,
        "languages": slot.languages,
        "busy": slot.busy,
        "ttl_s": slot.ttl_s,
        "size_bytes": slot.weights_bytes,
    }


@router.get("/decoder_status", summary="The models, device, what they can do, the queue")
async def decoder_status(
    models: ModelsDep, queue: TaskQueueDep, worker: TaskWorkerDep, settings: SettingsDep
) -> JSONResponse:
    """Live (asrd has no decoder process to ask), so `received_at` is always now. The top
    level describes the default model (MODEL_ID) with the seed's fields (`gpu_mode`,
    `max_model_to_use`, `last_loaded_model_size`, `is_model_loaded`, `tasks_in_queue`,
    `currently_busy`, `received_at`) beside asrd's; `models` lists every served model.
    `multilingual`, `tasks` and `languages` say what a model can do: an English-only model
    (`*.en`) transcribes English only and can't translate. `workers` lists the task workers
    heard from lately (this server's own, or with QUEUE_BACKEND=redis every worker of the
    cluster): name, busy, the task it runs (short id), its models and devices."""
    default = models.default
    counts = await queue.counts()
    workers = await queue.workers()
    return JSONResponse(
        {
            **model_status(default),
            "models": [model_status(slot) for slot in models.slots],
            "tasks_in_queue": counts["pending"],
            "tasks_processing": counts["processing"],
            "results_kept": counts["finished"] + counts["failed"],
            "max_task_queue_size": settings.max_task_queue_size,
            "currently_busy": any(slot.busy for slot in models.slots)
            or any(w["busy"] for w in workers),
            "current_task": short_id(worker.current.id) if worker and worker.current else None,
            "workers": [
                {key: value for key, value in w.items() if key != "seen_at"} for w in workers
            ],
            # The seed's names.
            "is_model_loaded": default.loaded,
            "gpu_mode": default.device.device == "cuda",
            "max_model_to_use": default.public_id,
            "last_loaded_model_size": default.public_id if default.loaded_once else None,
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
async def userinfo(request: Request, settings: SettingsDep) -> dict:
    """The user an authenticating reverse proxy (oauth2-proxy, or nginx with `auth_request`)
    names in its headers: `user` (`X-Forwarded-User`, or `X-User`), `email`
    (`X-Forwarded-Email`, or `X-Email`), `preferred_username`
    (`X-Forwarded-Preferred-Username`), believed only when the request comes from a proxy in
    TRUSTED_PROXIES (its TCP address; no header proves it): from anyone else they are null and
    `authenticated` is false. `user_agent` is the request's own."""
    trusted = from_trusted_proxy(request, settings.trusted_proxies)
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
    dependencies=[Depends(require_admin)],
)
async def download_logs(settings: SettingsDep) -> Response:
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
