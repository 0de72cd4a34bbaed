"""OpenAI's audio API: `/v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/models`.

Faithful to OpenAI's behaviour where clients can see it (formats, content types, the
`timestamp_granularities[]` rules, streaming events, error shape), with two documented
extensions: `max_segment_s` / `max_segment_chars` form fields, and a `segment` object (with
timings) on each streamed delta.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from ..engine import Engine, EngineNotReady, Segment, TranscribeOptions, Transcript
from ..errors import ApiError, openai_error_body
from ..formats import (
    TEXT_CONTENT_TYPE,
    segment_json,
    split_segments,
    to_srt,
    to_text,
    to_verbose_json,
    to_vtt,
    usage,
    words_json,
)
from ..languages import language_name
from ..models import canonical_name
from .common import (
    check_task,
    decode,
    parse_language,
    read_upload,
    ready_engine,
    transcribe_until_disconnect,
    warning_headers,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI audio API"])

ALIAS = "whisper-1"
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["segment", "word"]
STARTED = int(time.time())


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _served(request: Request) -> list[str]:
    return [request.app.state.engine.model_id, ALIAS]


def _check_model(request: Request, model: str | None) -> None:
    if not model:
        return
    served = request.app.state.engine.model_id
    if model not in (served, ALIAS) and canonical_name(model) != canonical_name(served):
        raise ApiError(
            404,
            "model_not_found",
            f"The model `{model}` does not exist; this server serves `{served}` "
            f"(also as `{ALIAS}`)",
            param="model",
        )


@router.get("/models", response_model=ModelList, summary="The served model, and its alias")
async def list_models(request: Request) -> ModelList:
    return ModelList(
        data=[ModelObject(id=name, created=STARTED, owned_by="asrd") for name in _served(request)]
    )


_NOT_FOUND = {404: {"description": "Not the served model"}}
_AUDIO_ERRORS = {
    400: {"description": "Undecodable or empty audio, or invalid parameters"},
    404: {"description": "`model` is not the served model"},
    413: {"description": "Over MAX_UPLOAD_MB, or audio over MAX_AUDIO_S or MAX_DECODE_CPU_S"},
}


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses=_NOT_FOUND,
    summary="One model, or 404 if unknown",
)
async def get_model(request: Request, model_id: str) -> ModelObject:
    _check_model(request, model_id)
    return ModelObject(id=model_id, created=STARTED, owned_by="asrd")


_FORM_DOC = {
    "model": "`whisper-1` or the served model's id",
    "language": "ISO 639-1 code of the speech (e.g. `fr`); detected when absent",
    "prompt": "Text to guide the style or continue a previous segment",
    "temperature": "0 (default): start at 0 and fall back to higher temperatures on "
    "failure, as OpenAI documents; above 0: that temperature",
    "granularities": "`segment` and/or `word`; `word` needs `verbose_json`",
    "stream": "Server-Sent Events: `transcript.text.delta` per segment, then "
    "`transcript.text.done`",
    "max_segment_s": "asrd extension: split segments longer than this many seconds at word "
    "boundaries (default SEGMENT_MAX_S)",
    "max_segment_chars": "asrd extension: split segments longer than this many characters "
    "(default SEGMENT_MAX_CHARS)",
}


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio into the language it is spoken in",
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}, **_AUDIO_ERRORS},
)
async def create_transcription(
    request: Request,
    file: UploadFile = File(description="The audio file, in any format FFmpeg decodes"),
    model: str | None = Form(None, description=_FORM_DOC["model"]),
    language: str | None = Form(None, description=_FORM_DOC["language"]),
    prompt: str | None = Form(None, description=_FORM_DOC["prompt"], max_length=4000),
    response_format: ResponseFormat = Form("json"),
    temperature: float = Form(0.0, ge=0, le=1, description=_FORM_DOC["temperature"]),
    timestamp_granularities: list[Granularity] = Form(
        ["segment"], alias="timestamp_granularities[]", description=_FORM_DOC["granularities"]
    ),
    stream: bool = Form(False, description=_FORM_DOC["stream"]),
    max_segment_s: float | None = Form(None, gt=0, description=_FORM_DOC["max_segment_s"]),
    max_segment_chars: int | None = Form(None, ge=10, description=_FORM_DOC["max_segment_chars"]),
) -> Response:
    return await _transcribe(
        request, "transcribe", file, model, language, prompt, response_format, temperature,
        timestamp_granularities, stream, max_segment_s, max_segment_chars,
    )  # fmt: skip


@router.post(
    "/audio/translations",
    summary="Translate speech in any language into English text",
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}, **_AUDIO_ERRORS},
)
async def create_translation(
    request: Request,
    file: UploadFile = File(description="The audio file, in any format FFmpeg decodes"),
    model: str | None = Form(None, description=_FORM_DOC["model"]),
    language: str | None = Form(None, description="asrd extension: " + _FORM_DOC["language"]),
    prompt: str | None = Form(None, description=_FORM_DOC["prompt"], max_length=4000),
    response_format: ResponseFormat = Form("json"),
    temperature: float = Form(0.0, ge=0, le=1, description=_FORM_DOC["temperature"]),
    timestamp_granularities: list[Granularity] = Form(
        ["segment"], alias="timestamp_granularities[]", description=_FORM_DOC["granularities"]
    ),
    stream: bool = Form(False, description=_FORM_DOC["stream"]),
    max_segment_s: float | None = Form(None, gt=0, description=_FORM_DOC["max_segment_s"]),
    max_segment_chars: int | None = Form(None, ge=10, description=_FORM_DOC["max_segment_chars"]),
) -> Response:
    return await _transcribe(
        request, "translate", file, model, language, prompt, response_format, temperature,
        timestamp_granularities, stream, max_segment_s, max_segment_chars,
    )  # fmt: skip


async def _transcribe(
    request: Request,
    task: Literal["transcribe", "translate"],
    file: UploadFile,
    model: str | None,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float,
    granularities: list[str],
    stream: bool,
    max_segment_s: float | None,
    max_segment_chars: int | None,
) -> Response:
    _check_model(request, model)
    with_words = "word" in granularities
    if with_words and response_format != "verbose_json":
        raise ApiError(
            400,
            "invalid_value",
            "timestamp_granularities[] with `word` requires response_format `verbose_json`",
            param="timestamp_granularities",
        )
    engine = ready_engine(request)
    check_task(engine, task)
    settings = engine.settings
    max_s = max_segment_s or settings.segment_max_s
    max_chars = max_segment_chars or settings.segment_max_chars
    options = TranscribeOptions(
        language=parse_language(engine, language),
        task=task,
        word_timestamps=with_words or bool(max_s or max_chars),
        prompt=prompt,
        temperature=temperature,
        batch_size=settings.stream_batch_size if stream else None,
    )
    data = await read_upload(file, settings, param="file")
    audio = await decode(engine, data, param="file")
    del data
    headers = warning_headers(audio)
    if stream:
        # Starlette closes the event generator when the client goes away, stopping the job.
        events = _events(engine, audio.samples, options, max_s, max_chars)
        del audio  # the generator holds the samples now (and frees them when it ends)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )
    samples = audio.samples
    del audio
    transcript = await transcribe_until_disconnect(request, engine, samples, options)
    del samples
    transcript.segments = split_segments(transcript.segments, max_s, max_chars)

    if response_format == "json":
        body = {"text": transcript.text, "usage": usage(transcript)}
        return JSONResponse(body, headers=headers)
    if response_format == "verbose_json":
        body = to_verbose_json(
            transcript, with_segments="segment" in granularities, with_words=with_words
        )
        return JSONResponse(body, headers=headers)
    segments = transcript.segments
    rendered = {"text": to_text(transcript), "srt": to_srt(segments), "vtt": to_vtt(segments)}
    return PlainTextResponse(
        rendered[response_format], media_type=TEXT_CONTENT_TYPE, headers=headers
    )


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(
    engine: Engine,
    samples: object,
    options: TranscribeOptions,
    max_s: float | None,
    max_chars: int | None,
) -> AsyncIterator[str]:
    """OpenAI's streaming events. Each delta also carries its `segment` (asrd extension)."""
    first = True
    count = 0
    try:
        transcription = engine.stream(samples, options)  # type: ignore[arg-type]
        # aclosing: a client that goes away closes this generator, which stops the engine.
        async with contextlib.aclosing(transcription) as segments:
            async for item in segments:
                if isinstance(item, Transcript):
                    done = {
                        "type": "transcript.text.done",
                        "text": item.text,
                        "usage": usage(item),
                        "language": language_name(item.language),
                        "duration": round(item.duration, 3),
                    }
                    yield _sse(done)
                    return
                for piece in split_segments([item], max_s, max_chars):
                    piece.id, count = count, count + 1
                    delta = piece.text.lstrip() if first else piece.text
                    first = False
                    yield _sse(_delta(delta, piece, options.word_timestamps))
    except Exception as exc:  # the stream has begun: report in-band, as OpenAI's SDK expects
        log.exception("streamed transcription failed")
        message = str(exc) if isinstance(exc, EngineNotReady) else "transcription failed"
        yield _sse(openai_error_body(500, "transcription_failed", message))


def _delta(text: str, segment: Segment, with_words: bool) -> dict:
    detail = segment_json(segment)
    if with_words:
        detail["words"] = words_json([segment])
    return {"type": "transcript.text.delta", "delta": text, "segment": detail}
