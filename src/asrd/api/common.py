"""What every transcription route does the same way: engine readiness, decoding, languages."""

from __future__ import annotations

import numpy as np
from fastapi import Request

from ..audio import AudioError, AudioTooLong
from ..engine import Engine
from ..errors import ApiError
from ..languages import UnknownLanguage, language_code


def ready_engine(request: Request) -> Engine:
    """The engine, if it takes requests now (a model unloaded for idleness loads on demand)."""
    engine: Engine = request.app.state.engine
    if not engine.accepting:
        message = engine.error or "the model is not loaded yet"
        raise ApiError(503, "model_not_ready", message, headers={"Retry-After": "5"})
    return engine


async def decode(engine: Engine, data: bytes, param: str | None = None) -> np.ndarray:
    try:
        return await engine.decode(data)
    except AudioError as exc:
        raise ApiError(400, "invalid_audio", str(exc), param=param) from None
    except AudioTooLong as exc:
        raise ApiError(413, "audio_too_long", str(exc), param=param) from None


def parse_language(engine: Engine, value: str | None) -> str | None:
    """A client's language (code or name) as the code Whisper takes; 400 if unusable."""
    if value is None or not value.strip():
        return None
    try:
        code = language_code(value)
        engine.check_language(code)
    except (UnknownLanguage, ValueError) as exc:
        raise ApiError(400, "invalid_language", str(exc), param="language") from None
    return code
