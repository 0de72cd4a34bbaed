"""The seed's synchronous API: `POST /asr` with raw audio, a URL, a server path, or a form."""

from __future__ import annotations

import ctypes
import functools
import json
import time
from codecs import BOM_UTF8
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from ..config import Settings
from ..errors import ApiError
from ..inputs import load_source
from ..limits import FORM_LIMITS, JSON_LIMIT_BYTES
from ..transcript import TranscribeOptions
from .common import (
    check_task,
    decode,
    model_slot,
    parse_language,
    read_upload,
    transcribe_until_disconnect,
    warning_headers,
)
from .deps import AudioDep, ModelsDep, SettingsDep

router = APIRouter(tags=["seed API"])


class UrlRequest(BaseModel):
    url: str = Field(
        description="An http(s) URL to download, or an absolute path on the server "
        "(only below LOCAL_FILE_DIRS).",
        min_length=1,
        max_length=8192,
    )


class Chunk(BaseModel):
    timestamp: tuple[float, float] = Field(description="Start and end, in seconds")
    text: str


class AsrResponse(BaseModel):
    text: str
    chunks: list[Chunk]
    language: str = Field(description="Language of the speech (ISO 639-1)")
    duration: float = Field(description="Length of the decoded audio, in seconds")
    warnings: list[str] = Field(
        default_factory=list,
        description="Set when part of the audio could not be decoded (damaged or cut short)",
    )


_ERRORS = {
    status: {"description": text}
    for status, text in {
        400: "Undecodable or empty audio, a format that is not audio, a malformed URL, or an "
        "unknown language",
        403: "A server path outside LOCAL_FILE_DIRS",
        404: "`model` is not a served model",
        413: "Audio over MAX_UPLOAD_MB, MAX_AUDIO_S or MAX_DECODE_CPU_S",
        422: "A JSON object without a string `url`, or a form without a `file`",
        502: "Downloading the URL failed",
        503: "The model can't be loaded now (loading, or no room), or the decoded-audio budget "
        "is full; see Retry-After",
        504: "Downloading the URL timed out",
    }.items()
}

_REQUEST_BODY = {
    "required": True,
    "description": "Audio bytes with any Content-Type (or none); or a JSON object with a `url` "
    "(recognised whatever the Content-Type, up to 64 KB); or a multipart form with a `file`.",
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": "(the audio file's bytes; any Content-Type, or none)",
        },
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": UrlRequest.model_json_schema()},
        "text/plain": {"schema": UrlRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
    },
}


@router.post(
    "/asr",
    response_model=AsrResponse,
    responses=_ERRORS,
    summary="Transcribe audio: raw bytes, a URL or server path as JSON, or a multipart form",
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def asr(
    request: Request,
    models: ModelsDep,
    audio_lanes: AudioDep,
    settings: SettingsDep,
    model: str | None = Query(
        None,
        description="The model to use, of those served (GET /v1/models); default MODEL_ID",
        max_length=512,
    ),
    language: str | None = Query(
        None, description="Language of the speech (ISO 639-1, e.g. `fr`); detected if absent"
    ),
    task: Literal["transcribe", "translate"] = Query(
        "transcribe", description="`translate` gives English text from any language"
    ),
    word_timestamps: bool = Query(
        False, description='One chunk per word, as the seed\'s `return_timestamps="word"`'
    ),
) -> JSONResponse:
    started = time.perf_counter()
    slot = model_slot(models, model)
    check_task(slot, task, param="task")
    options = TranscribeOptions(
        language=parse_language(slot, language), task=task, word_timestamps=word_timestamps
    )
    data = await read_audio_input(request, settings)
    audio = await decode(audio_lanes, data)
    del data
    samples, warnings = audio.samples, list(audio.warnings)
    headers = warning_headers(audio)
    del audio
    transcript = await transcribe_until_disconnect(request, slot, samples, options)
    del samples

    elapsed = time.perf_counter() - started
    if word_timestamps:
        chunks = [
            Chunk(timestamp=(word.start, word.end), text=word.word.strip())
            for segment in transcript.segments
            for word in segment.words or ()
        ]
    else:
        chunks = [
            Chunk(timestamp=(segment.start, segment.end), text=segment.text.strip())
            for segment in transcript.segments
        ]
    body = AsrResponse(
        text=transcript.text,
        chunks=chunks,
        language=transcript.language,
        duration=round(transcript.duration, 3),
        warnings=warnings,
    )
    headers |= {
        "X-Processing-Time": f"{elapsed:.3f}",
        "X-Audio-Length": f"{transcript.duration:.3f}",
        "X-Realtime-Factor": f"{transcript.duration / max(elapsed, 1e-6):.2f}",
        "X-Model-ID": slot.public_id,
        # The seed's deployment headers, always sent as it did: empty when they don't apply.
        "X-GPU-Name": gpu_name() if slot.device.device == "cuda" else "",
        "X-Salad-Machine-ID": _header_value(settings.salad_machine_id),
        "X-Salad-Container-Group-ID": _header_value(settings.salad_container_group_id),
    }
    # `warnings` only when there are some: the seed's clients see the shape they know.
    content = body.model_dump(exclude=None if warnings else {"warnings"})
    return JSONResponse(content, headers=headers)


async def read_audio_input(request: Request, settings: Settings) -> bytes:
    """The audio bytes of a `/asr` request, whichever of the four shapes it has.

    As the seed did, the Content-Type decides little: a body that is a JSON object with a
    `url` is a URL request whatever its type (`curl -d` sends a form type, `requests.post(
    data=json.dumps(...))` none, a browser's `fetch` with a string body `text/plain`), a
    multipart form is a form, and anything else is audio, for the decoder to accept or refuse.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        # Held to JSON_LIMIT_BYTES by the body limit: a JSON type always means a JSON body.
        return await load_source(_parse_url_request(await request.body()).url, settings)
    if content_type == "multipart/form-data":
        return await _read_form_file(request, settings)
    data = await request.body()  # exactly capped at MAX_UPLOAD_MB by the body limit
    if not data:
        raise ApiError(400, "invalid_audio", "the request body is empty")
    if _looks_like_json_object(data):
        # Small (JSON_LIMIT_BYTES at most), so parsed here on the loop in microseconds.
        return await load_source(_parse_url_request(data).url, settings)
    return data


def _header_value(value: str | None) -> str:
    """A setting as a header value: printable ASCII only (no header injection, no 500)."""
    return "".join(char if " " <= char <= "~" else "?" for char in (value or "").strip())


@functools.cache
def gpu_name(index: int = 0, library: str = "libcuda.so.1") -> str:
    """The name of CUDA device `index` (0: the one CTranslate2 uses, after
    CUDA_VISIBLE_DEVICES), from the driver's own library: no nvidia-smi, no torch. "" if it
    can't be read."""
    try:
        cuda = ctypes.CDLL(library)
        device, name = ctypes.c_int(), ctypes.create_string_buffer(256)
        if (
            cuda.cuInit(0) != 0
            or cuda.cuDeviceGet(ctypes.byref(device), index) != 0
            or cuda.cuDeviceGetName(name, len(name), device) != 0
        ):
            return ""
    except (OSError, AttributeError):
        return ""
    return _header_value(name.value.decode("utf-8", "replace"))


def _looks_like_json_object(data: bytes) -> bool:
    """A small body that parses as a JSON object. No audio format starts with `{`, and the
    few kilobytes parsed here cost nothing; a bigger body is audio (or refused as such)."""
    if len(data) > JSON_LIMIT_BYTES or data.removeprefix(BOM_UTF8).lstrip()[:1] != b"{":
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def _parse_url_request(raw: bytes) -> UrlRequest:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict) or "url" not in payload:
        raise ApiError(422, "invalid_request", 'a JSON body must be an object with a "url" field')
    try:
        return UrlRequest.model_validate(payload)
    except ValidationError as exc:
        message = "; ".join(f"url: {error['msg']}" for error in exc.errors())
        raise ApiError(422, "invalid_request", message) from None


async def _read_form_file(request: Request, settings: Settings) -> bytes:
    async with request.form(**FORM_LIMITS) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "the form needs a 'file' field with the audio")
        return await read_upload(upload, settings)
