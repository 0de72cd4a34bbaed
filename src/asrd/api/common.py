"""What every transcription route does the same way: the model asked for, decoding,
languages, and transcribing until the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile

from ..audio import AudioError, AudioTooLong, DecodedAudio, DecodeTooSlow, UnsupportedFormat
from ..audio_lanes import AudioLanes
from ..budget import BudgetExceeded
from ..config import Settings
from ..errors import ApiError
from ..inputs import too_large
from ..languages import UnknownLanguage, language_code
from ..logs import request_target
from ..registry import ModelNotServed, ModelRegistry
from ..slot import ModelNotReady, ModelSlot
from ..transcript import TranscribeOptions, Transcript

log = logging.getLogger(__name__)


async def read_upload(upload: UploadFile, settings: Settings, param: str | None = None) -> bytes:
    """An uploaded file's bytes, refused if empty or over MAX_UPLOAD_MB (the body limit leaves
    room for the form around the file, so the file itself is checked here)."""
    data = await upload.read()
    await upload.close()
    if not data:
        raise ApiError(400, "invalid_audio", "the uploaded file is empty", param=param)
    if len(data) > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    return data


def model_slot(models: ModelRegistry, name: str | None, param: str | None = "model") -> ModelSlot:
    """The served model `name` means (none: MODEL_ID), if it takes requests now (a model not
    loaded is loaded for the request): 404 if not served, 503 if it can't load."""
    try:
        slot = models.get(name)
    except ModelNotServed as exc:
        raise ApiError(404, "model_not_found", str(exc), param=param) from None
    if not slot.accepting:
        raise not_ready(ModelNotReady(slot.error or "the model is not loaded yet"))
    return slot


def not_ready(exc: ModelNotReady) -> ApiError:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return ApiError(503, "model_not_ready", str(exc), headers=headers)


async def decode(audio: AudioLanes, data: bytes, param: str | None = None) -> DecodedAudio:
    """Decoded audio for a request, or the `ApiError` that says why not."""
    try:
        return await audio.decode(data)
    except UnsupportedFormat as exc:
        raise ApiError(400, "unsupported_format", str(exc), param=param) from None
    except AudioError as exc:
        raise ApiError(400, "invalid_audio", str(exc), param=param) from None
    except AudioTooLong as exc:
        raise ApiError(413, "audio_too_long", str(exc), param=param) from None
    except DecodeTooSlow as exc:
        raise ApiError(413, "decode_too_slow", str(exc), param=param) from None
    except BudgetExceeded as exc:
        if not exc.fits_ever:
            raise ApiError(413, "audio_too_long", str(exc), param=param) from None
        raise ApiError(503, "server_busy", str(exc), headers={"Retry-After": "5"}) from None


def warning_headers(audio: DecodedAudio) -> dict[str, str]:
    """`X-Audio-Warnings` when part of the audio could not be decoded (never silent)."""
    if not audio.warnings:
        return {}
    return {"X-Audio-Warnings": "; ".join(audio.warnings)}


def parse_language(slot: ModelSlot, value: str | None) -> str | None:
    """A client's language (code or name) as the code Whisper takes; 400 if unusable."""
    if value is None or not value.strip():
        return None
    try:
        code = language_code(value)
        slot.check_language(code)
    except (UnknownLanguage, ValueError) as exc:
        raise ApiError(400, "invalid_language", str(exc), param="language") from None
    return code


def check_task(slot: ModelSlot, task: str, param: str | None = None) -> None:
    """400 `unsupported_task` for a translation on an English-only model."""
    try:
        slot.check_task(task)
    except ValueError as exc:
        raise ApiError(400, "unsupported_task", str(exc), param=param) from None


async def transcribe_until_disconnect(
    request: Request, slot: ModelSlot, samples: np.ndarray, options: TranscribeOptions
) -> Transcript:
    """Transcribe for a request whose body has been read, cancelling the work if the client
    goes away first: its job leaves the scheduler at the next batch and its audio is freed,
    instead of running on for nobody."""

    async def work() -> Transcript:
        try:
            return await slot.transcribe(samples, options)
        except ModelNotReady as exc:
            raise not_ready(exc) from None

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    transcription = asyncio.ensure_future(work())
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({transcription, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not transcription.done():
            transcription.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await transcription
    if transcription.cancelled():
        log.info("%s %s: the client went away; its transcription was stopped",
                 request.method, request_target(request.scope))  # fmt: skip
        # nginx's "client closed request": nobody reads it, the access log and metrics do.
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    return transcription.result()
