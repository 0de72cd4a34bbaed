"""The second seed's asynchronous API: submit a file, poll its task, download the result.

Paths are the seed's (`/api/v1/transcribe`, `/api/v1/status?task_id=`, `/api/v1/srt?task_id=`),
plus REST-style `/api/v1/tasks/{id}`. A full queue is refused at once (429), never accepted and
failed later; a bad language or a file with no audio is a 400 before anything is queued.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import zipfile
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..audio import AudioError, UnsupportedFormat
from ..auth import key_matches
from ..errors import ApiError
from ..formats import TEXT_CONTENT_TYPE, to_srt, to_text, to_vtt
from ..inputs import UrlNotAllowed, check_url_allowed
from ..logs import short_id
from ..tasks import QueueFull, Task, TaskStatus
from .common import check_task, parse_language, read_upload, ready_engine

router = APIRouter(prefix="/api/v1", tags=["task API"])

TASK_ID_DOC = "The id returned when the task was submitted"


def _queue(request: Request):
    return request.app.state.task_queue


async def _submit(
    request: Request,
    kind: Literal["transcribe", "translate"],
    file: UploadFile,
    language: str | None,
    callback_url: str | None,
) -> JSONResponse:
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
        type=kind, audio=data, language=code, file_name=file.filename, callback_url=callback_url
    )
    try:
        position = await _queue(request).submit(task)
    except QueueFull as exc:
        raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": "30"}) from None
    return JSONResponse(
        {"task_id": task.id, "status": "pending", "position_in_queue": position}, status_code=202
    )


_SUBMIT_DOC = {
    "language": "ISO 639-1 code of the speech (also accepted as a query parameter); "
    "detected when absent",
    "callback_url": "An http(s) URL that gets the finished (or failed) task POSTed as JSON",
}
_SUBMIT_RESPONSES = {
    202: {"description": "Queued: `{task_id, status: pending, position_in_queue}`"},
    400: {"description": "No audio in the file, an unknown language, or a refused callback URL"},
    413: {"description": "Over MAX_UPLOAD_MB"},
    429: {
        "description": "The queue is full (MAX_TASK_QUEUE_SIZE or MAX_QUEUE_MB); see Retry-After"
    },
}


@router.post("/transcribe", status_code=202, responses=_SUBMIT_RESPONSES, summary="Queue a file")
async def submit_transcription(
    request: Request,
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    return await _submit(request, "transcribe", file, language or language_query, callback_url)


@router.post(
    "/translate",
    status_code=202,
    responses=_SUBMIT_RESPONSES,
    summary="Queue a file to translate into English",
)
async def submit_translation(
    request: Request,
    file: UploadFile = File(description="The audio file"),
    language: str | None = Form(None, description=_SUBMIT_DOC["language"]),
    callback_url: str | None = Form(None, description=_SUBMIT_DOC["callback_url"]),
    language_query: str | None = Query(None, alias="language", include_in_schema=False),
) -> JSONResponse:
    return await _submit(request, "translate", file, language or language_query, callback_url)


async def _find(request: Request, task_id: str) -> tuple[Task, int | None]:
    found = await _queue(request).get(task_id)
    if found is None:
        raise ApiError(404, "task_not_found", "no such task (unknown, cancelled or expired)")
    return found


async def _task_json(request: Request, task_id: str) -> JSONResponse:
    task, position = await _find(request, task_id)
    return JSONResponse(task.to_json(position))


_NOT_FOUND = {404: {"description": "No such task (unknown, cancelled or expired)"}}
_DOWNLOAD_ERRORS = {
    **_NOT_FOUND,
    409: {"description": "The task has not finished (or failed): no result yet"},
}


@router.get(
    "/tasks/{task_id}",
    responses=_NOT_FOUND,
    summary="A task: its state, position, result or error",
)
async def get_task(request: Request, task_id: str) -> JSONResponse:
    return await _task_json(request, task_id)


@router.get(
    "/status",
    responses=_NOT_FOUND,
    summary="A task (the seed's form of GET /api/v1/tasks/{task_id})",
)
async def get_status(
    request: Request, task_id: str = Query(description=TASK_ID_DOC)
) -> JSONResponse:
    return await _task_json(request, task_id)


@router.delete(
    "/tasks/{task_id}",
    responses=_NOT_FOUND,
    summary="Cancel a pending or running task, or drop a result",
)
async def delete_task(request: Request, task_id: str) -> JSONResponse:
    task = await _queue(request).remove(task_id)
    if task is None:
        raise ApiError(404, "task_not_found", "no such task (unknown, cancelled or expired)")
    action = "deleted" if task.done else "cancelled"
    return JSONResponse({"task_id": task_id, "status": action})


async def _download(request: Request, task_id: str, extension: str) -> Response:
    task, _ = await _find(request, task_id)
    if task.status is not TaskStatus.FINISHED or task.transcript is None:
        raise ApiError(
            409, "task_not_finished", f"the task is {task.status}, there is no result to download"
        )
    transcript = task.transcript
    body = {
        "txt": to_text,
        "srt": lambda t: to_srt(t.segments),
        "vtt": lambda t: to_vtt(t.segments),
    }
    stem = Path(task.file_name or "transcript").stem or "transcript"
    return PlainTextResponse(
        body[extension](transcript),
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


@router.get("/txt", responses=_DOWNLOAD_ERRORS, summary="Download a finished task's text")
async def download_txt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _download(request, task_id, "txt")


@router.get(
    "/srt", responses=_DOWNLOAD_ERRORS, summary="Download a finished task's subtitles (SubRip)"
)
async def download_srt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _download(request, task_id, "srt")


@router.get(
    "/vtt", responses=_DOWNLOAD_ERRORS, summary="Download a finished task's subtitles (WebVTT)"
)
async def download_vtt(request: Request, task_id: str = Query(description=TASK_ID_DOC)) -> Response:
    return await _download(request, task_id, "vtt")


@router.get("/decoder_status", summary="Model, device, loaded or not, queue length")
async def decoder_status(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    counts = await _queue(request).counts()
    worker = request.app.state.task_worker
    return JSONResponse(
        {
            "model": engine.model_id,
            "device": engine.device.device,
            "compute_type": engine.device.compute_type,
            "state": str(engine.state),
            "model_loaded": engine.loaded,
            "tasks_in_queue": counts["pending"],
            "tasks_processing": counts["processing"],
            "results_kept": counts["finished"] + counts["failed"],
            "max_task_queue_size": engine.settings.max_task_queue_size,
            "currently_busy": engine.busy,
            "current_task": short_id(worker.current.id) if worker.current else None,
        }
    )


@router.get("/version", summary="asrd's version")
async def version() -> dict:
    return {"version": __version__}


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
