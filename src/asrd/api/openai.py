"""OpenAI's audio API: `/v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/models`.

Faithful to OpenAI's behaviour where clients can see it (formats, content types, the
`timestamp_granularities[]` rules, streaming events, error shape), with two documented
extensions: `max_segment_s` / `max_segment_chars` form fields, and a `segment` object (with
timings) on each streamed delta.

The `model` field takes the served model in any common spelling (`tiny.en`,
`openai/whisper-tiny.en`, `Systran/faster-whisper-tiny.en`, any case) or an alias from
MODEL_ALIASES (OpenAI's and Groq's names by default); anything else is a 404 that names what is
served. What asrd can't do is refused with a 400 that says so, never silently ignored:
`include[]=logprobs` (no per-token log-probabilities), `response_format=diarized_json` and
`known_speaker_*` (no speaker diarization). A diarization model name (`...-diarize`) with any
other format is served as plain transcription, with `X-Diarization: unsupported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..errors import ApiError, openai_error_body
from ..formats import (
    TEXT_CONTENT_TYPE,
    render,
    segment_json,
    split_segments,
    usage,
    words_json,
)
from ..languages import LANGUAGES, language_name
from ..models import canonical_name, estimated_size, local_models
from ..registry import ModelNotServed
from ..slot import ModelNotReady, ModelSlot
from ..transcript import Segment, TranscribeOptions, Transcript
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

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI audio API"])

# `diarized_json` is OpenAI's, for its diarization model: refused with a 400 that says why.
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
GRANULARITIES = ("segment", "word")
STARTED = int(time.time())
DIARIZATION_HEADER = "X-Diarization"
MAX_PROMPT_CHARS = 4000


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # asrd's extensions: what the model can do, whether it is in memory, which model an
    # alias means.
    multilingual: bool = Field(
        description="false: English-only (transcribes English, can't translate)"
    )
    tasks: list[Literal["transcribe", "translate"]] = Field(
        description="`transcribe` (/v1/audio/transcriptions) and, when multilingual, "
        "`translate` (/v1/audio/translations)"
    )
    languages: list[str] = Field(description="The languages it takes (ISO 639-1)")
    loaded: bool = Field(description="In memory now (else it loads on its next request)")
    default: bool = Field(description="MODEL_ID: used when a request names no model")
    size_bytes: int = Field(
        description="Its weights (on disk once found; estimated from the name before)"
    )
    alias_of: str | None = Field(
        None, description="For an alias or another spelling: the served model it names"
    )
    served: bool = Field(
        True,
        description="false: on this machine (CACHE_DIR, or an installed package) but not in "
        "MODEL_ID or MODELS, so requests can't use it (listed with `?available=true`)",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def model_object(slot: ModelSlot, name: str | None = None) -> ModelObject:
    """`slot` as OpenAI's model object, under its own id or `name` (an alias of it)."""
    name = name or slot.public_id
    return ModelObject(
        id=name,
        created=STARTED,
        owned_by="asrd",
        multilingual=slot.multilingual,
        tasks=slot.tasks,  # type: ignore[arg-type]
        languages=slot.languages,
        loaded=slot.loaded,
        default=slot.is_default,
        size_bytes=slot.weights_bytes,
        alias_of=None if name == slot.public_id else slot.public_id,
    )


@router.get(
    "/models",
    response_model=ModelList,
    summary="The served models (MODEL_ID first, then MODELS), then their aliases",
)
async def list_models(
    models: ModelsDep,
    settings: SettingsDep,
    available: bool = Query(
        False, description="Also the models on this machine that are not served (`served` false)"
    ),
) -> ModelList:
    data = [model_object(slot) for slot in models.slots]
    for index, slot in enumerate(models.slots):
        data += [model_object(slot, alias) for alias in models.names.aliases_of(index)]
    if available:
        on_disk = await asyncio.to_thread(
            local_models, settings.cache_dir, settings.baked_models_dir
        )
        data += [_unserved(name) for name in on_disk if models.names.find(name) is None]
    return ModelList(data=data)


def _unserved(model_id: str) -> ModelObject:
    multilingual = not canonical_name(model_id).lower().endswith(".en")
    return ModelObject(
        id=model_id,
        created=STARTED,
        owned_by="asrd",
        multilingual=multilingual,
        tasks=["transcribe", "translate"] if multilingual else ["transcribe"],
        languages=sorted(LANGUAGES) if multilingual else ["en"],
        loaded=False,
        default=False,
        size_bytes=estimated_size(model_id),
        served=False,
    )


_NOT_FOUND = {404: {"description": "Not a served model"}}
_AUDIO_ERRORS = {
    400: {"description": "Undecodable or empty audio, or invalid parameters"},
    404: {"description": "`model` is not a served model"},
    413: {"description": "Over MAX_UPLOAD_MB, or audio over MAX_AUDIO_S or MAX_DECODE_CPU_S"},
    503: {
        "description": "The model can't be loaded now (loading, or no room), or the server "
        "is busy; see Retry-After"
    },
}


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses=_NOT_FOUND,
    summary="One model, or 404 if not served",
)
async def get_model(models: ModelsDep, model_id: str) -> ModelObject:
    model_id = model_id.rstrip("/")  # `/v1/models/whisper-1/`
    try:
        slot = models.get(model_id)
    except ModelNotServed as exc:
        raise ApiError(404, "model_not_found", str(exc), param="model") from None
    return model_object(slot, model_id)  # another spelling, or an alias: `alias_of` says


_FORM_DOC = {
    "model": "The served model in any common spelling (`tiny.en`, `openai/whisper-tiny.en`, "
    "`Systran/faster-whisper-tiny.en`, any case) or an alias from MODEL_ALIASES (default: "
    "`whisper-1`, `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`, `gpt-4o-transcribe-diarize`, "
    "`whisper-large-v3`, `whisper-large-v3-turbo`); anything else is 404. See GET /v1/models",
    "language": "ISO 639-1 code of the speech (e.g. `fr`); detected when absent",
    "prompt": "Text to guide the style or continue a previous segment",
    "response_format": "`json`, `text`, `srt`, `vtt` or `verbose_json`. `diarized_json` is a "
    "400: asrd has no speaker diarization",
    "temperature": "0 (default): start at 0 and fall back to higher temperatures on "
    "failure, as OpenAI documents; above 0: that temperature",
    "granularities": "`segment` and/or `word`; `word` needs `verbose_json`",
    "granularities_plain": "The same as `timestamp_granularities[]`, for clients that send the "
    "name without brackets (also comma-separated)",
    "include": "OpenAI's `logprobs` is refused with a 400: asrd computes no per-token "
    "log-probabilities (`verbose_json` segments have `avg_logprob`)",
    "include_plain": "The same as `include[]`",
    "keywords": "Words or phrases to guide the transcription (OpenAI's, for `gpt-transcribe`): "
    "appended to the prompt, which biases Whisper towards them",
    "keywords_plain": "The same as `keywords[]`",
    "languages": "Possible languages of the speech (ISO 639-1): one is used as `language`; with "
    "several, each is checked and the language is detected as without them",
    "languages_plain": "The same as `languages[]`",
    "chunking_strategy": "Accepted for compatibility (`auto`, or a `server_vad` object, also as "
    "`chunking_strategy[type]=server_vad`), no effect: asrd always cuts long audio at the pauses "
    "its voice activity detection finds",
    "stream": "Server-Sent Events: `transcript.text.delta` per segment, then "
    "`transcript.text.done`",
    "max_segment_s": "asrd extension: split segments longer than this many seconds at word "
    "boundaries (default SEGMENT_MAX_S)",
    "max_segment_chars": "asrd extension: split segments longer than this many characters "
    "(default SEGMENT_MAX_CHARS)",
}


@dataclass
class AudioForm:
    """The form fields both audio routes share (FastAPI fills it from the multipart body)."""

    file: Annotated[UploadFile, File(description="The audio file, in any format FFmpeg decodes")]
    model: Annotated[str | None, Form(description=_FORM_DOC["model"])] = None
    prompt: Annotated[
        str | None, Form(description=_FORM_DOC["prompt"], max_length=MAX_PROMPT_CHARS)
    ] = None
    response_format: Annotated[ResponseFormat, Form(description=_FORM_DOC["response_format"])] = (
        "json"
    )
    temperature: Annotated[float, Form(ge=0, le=1, description=_FORM_DOC["temperature"])] = 0.0
    granularities: Annotated[
        list[str] | None,
        Form(alias="timestamp_granularities[]", description=_FORM_DOC["granularities"]),
    ] = None
    granularities_plain: Annotated[
        list[str] | None,
        Form(alias="timestamp_granularities", description=_FORM_DOC["granularities_plain"]),
    ] = None
    include: Annotated[
        list[str] | None, Form(alias="include[]", description=_FORM_DOC["include"])
    ] = None
    include_plain: Annotated[
        list[str] | None, Form(alias="include", description=_FORM_DOC["include_plain"])
    ] = None
    keywords: Annotated[
        list[str] | None, Form(alias="keywords[]", description=_FORM_DOC["keywords"])
    ] = None
    keywords_plain: Annotated[
        list[str] | None, Form(alias="keywords", description=_FORM_DOC["keywords_plain"])
    ] = None
    languages: Annotated[
        list[str] | None, Form(alias="languages[]", description=_FORM_DOC["languages"])
    ] = None
    languages_plain: Annotated[
        list[str] | None, Form(alias="languages", description=_FORM_DOC["languages_plain"])
    ] = None
    chunking_strategy: Annotated[str | None, Form(description=_FORM_DOC["chunking_strategy"])] = (
        None
    )
    stream: Annotated[bool, Form(description=_FORM_DOC["stream"])] = False
    max_segment_s: Annotated[float | None, Form(gt=0, description=_FORM_DOC["max_segment_s"])] = (
        None
    )
    max_segment_chars: Annotated[
        int | None, Form(ge=10, description=_FORM_DOC["max_segment_chars"])
    ] = None


@dataclass
class Server:
    """What both audio routes use of the server."""

    models: ModelsDep
    audio: AudioDep
    settings: SettingsDep


_OK = {200: {"content": {"text/plain": {}, "text/event-stream": {}}}}


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio into the language it is spoken in",
    responses={**_OK, **_AUDIO_ERRORS},
)
async def create_transcription(
    request: Request,
    form: Annotated[AudioForm, Depends()],
    server: Annotated[Server, Depends()],
    language: str | None = Form(None, description=_FORM_DOC["language"]),
) -> Response:
    return await _transcribe(request, server, "transcribe", form, language)


@router.post(
    "/audio/translations",
    summary="Translate speech in any language into English text",
    responses={**_OK, **_AUDIO_ERRORS},
)
async def create_translation(
    request: Request,
    form: Annotated[AudioForm, Depends()],
    server: Annotated[Server, Depends()],
    language: str | None = Form(None, description="asrd extension: " + _FORM_DOC["language"]),
) -> Response:
    return await _transcribe(request, server, "translate", form, language)


def _granularities(form: AudioForm) -> set[str]:
    """`timestamp_granularities[]` and `timestamp_granularities` (plain, or comma-separated)."""
    values = [
        value.strip()
        for field in (form.granularities or [], form.granularities_plain or [])
        for item in field
        for value in item.split(",")
        if value.strip()
    ]
    for value in values:
        if value not in GRANULARITIES:
            raise ApiError(
                400,
                "invalid_value",
                f"timestamp_granularities: {value!r} is not one of `segment`, `word`",
                param="timestamp_granularities",
            )
    return set(values) or {"segment"}


async def _refuse_what_asrd_lacks(request: Request, form: AudioForm) -> None:
    """OpenAI parameters asrd can't honour are refused, with the reason, never ignored."""
    for value in [*(form.include or []), *(form.include_plain or [])]:
        if value.strip() == "logprobs":
            raise ApiError(
                400,
                "unsupported_value",
                "include[]=logprobs is not supported: asrd computes no per-token "
                "log-probabilities (each verbose_json segment has its `avg_logprob`)",
                param="include",
            )
        raise ApiError(
            400, "invalid_value", f"include: {value!r} is not supported", param="include"
        )
    if form.response_format == "diarized_json":
        raise ApiError(
            400,
            "unsupported_value",
            "response_format `diarized_json` is not supported: asrd has no speaker diarization "
            "(use json, text, srt, vtt or verbose_json for the transcript without speakers)",
            param="response_format",
        )
    fields = await request.form()  # already parsed for the route: no second read
    for key in fields:
        if key.startswith(("known_speaker_names", "known_speaker_references")):
            raise ApiError(
                400,
                "unsupported_value",
                f"{key.removesuffix('[]')} is not supported: asrd has no speaker diarization",
                param=key.removesuffix("[]"),
            )
    strategy = form.chunking_strategy
    nested = fields.get("chunking_strategy[type]")
    if strategy is not None and strategy.strip().startswith("{"):
        with contextlib.suppress(ValueError):
            parsed = json.loads(strategy)
            nested = parsed.get("type", "?") if isinstance(parsed, dict) else "?"
            strategy = None
    if (strategy is not None and strategy.strip() != "auto") or nested not in (None, "server_vad"):
        raise ApiError(
            400,
            "invalid_value",
            "chunking_strategy must be `auto` or an object with type `server_vad` (asrd "
            "accepts it and always cuts audio at pauses found by voice activity detection)",
            param="chunking_strategy",
        )


def _language(slot: ModelSlot, language: str | None, form: AudioForm) -> str | None:
    """`language`, or OpenAI's `languages[]`: one is the language; several are each checked
    (a model can't take every one) and the language is detected."""
    if language and language.strip():
        return parse_language(slot, language)
    candidates = [
        code for code in (*(form.languages or ()), *(form.languages_plain or ())) if code.strip()
    ]
    codes = {parse_language(slot, code) for code in candidates}
    return codes.pop() if len(codes) == 1 else None


def _prompt(form: AudioForm) -> str | None:
    """The prompt, with OpenAI's `keywords[]` after it: Whisper's prompt is how it is told
    which words to expect (faster-whisper's `hotwords` work the same way)."""
    keywords = [word.strip() for word in (*(form.keywords or ()), *(form.keywords_plain or ()))]
    keywords = [word for word in keywords if word]
    prompt = " ".join(part for part in (form.prompt or "", ", ".join(keywords)) if part)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(
            400,
            "invalid_value",
            f"prompt and keywords together are limited to {MAX_PROMPT_CHARS} characters",
            param="keywords" if keywords else "prompt",
        )
    return prompt or None


async def _transcribe(
    request: Request,
    server: Server,
    task: Literal["transcribe", "translate"],
    form: AudioForm,
    language: str | None,
) -> Response:
    slot = model_slot(server.models, form.model)
    granularities = _granularities(form)
    await _refuse_what_asrd_lacks(request, form)
    response_format, stream = form.response_format, form.stream
    with_words = "word" in granularities
    if with_words and response_format != "verbose_json":
        raise ApiError(
            400,
            "invalid_value",
            "timestamp_granularities[] with `word` requires response_format `verbose_json`",
            param="timestamp_granularities",
        )
    check_task(slot, task)
    settings = server.settings
    max_s = form.max_segment_s or settings.segment_max_s
    max_chars = form.max_segment_chars or settings.segment_max_chars
    options = TranscribeOptions(
        language=_language(slot, language, form),
        task=task,
        word_timestamps=with_words or bool(max_s or max_chars),
        prompt=_prompt(form),
        temperature=form.temperature,
        batch_size=settings.stream_batch_size if stream else None,
    )
    data = await read_upload(form.file, settings, param="file")
    audio = await decode(server.audio, data, param="file")
    del data
    headers = warning_headers(audio)
    if form.model and "diarize" in form.model.lower():
        # OpenAI's diarization model asked for a format without speakers: the transcript is
        # the same, and this header says that no speakers were looked for.
        headers[DIARIZATION_HEADER] = "unsupported"
    if stream:
        # Starlette closes the event generator when the client goes away, stopping the job.
        events = _events(slot, audio.samples, options, max_s, max_chars)
        del audio  # the generator holds the samples now (and frees them when it ends)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )
    samples = audio.samples
    del audio
    transcript = await transcribe_until_disconnect(request, slot, samples, options)
    del samples
    transcript.segments = split_segments(transcript.segments, max_s, max_chars)

    rendered = render(
        transcript, response_format, with_segments="segment" in granularities,
        with_words=with_words,
    )  # fmt: skip
    if isinstance(rendered, dict):
        return JSONResponse(rendered, headers=headers)
    return PlainTextResponse(rendered, media_type=TEXT_CONTENT_TYPE, headers=headers)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(
    slot: ModelSlot,
    samples: object,
    options: TranscribeOptions,
    max_s: float | None,
    max_chars: int | None,
) -> AsyncIterator[str]:
    """OpenAI's streaming events. Each delta also carries its `segment` (asrd extension)."""
    first = True
    count = 0
    try:
        transcription = slot.stream(samples, options)  # type: ignore[arg-type]
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
        message = str(exc) if isinstance(exc, ModelNotReady) else "transcription failed"
        yield _sse(openai_error_body(500, "transcription_failed", message))


def _delta(text: str, segment: Segment, with_words: bool) -> dict:
    detail = segment_json(segment)
    if with_words:
        detail["words"] = words_json([segment])
    return {"type": "transcript.text.delta", "delta": text, "segment": detail}
