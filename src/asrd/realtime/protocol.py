"""OpenAI's Realtime API events for transcription sessions: the session's configuration as
`session.update` (GA) and `transcription_session.update` (Beta) change it, and the server
events in either shape.

Only what a transcription session can do is accepted; the rest (conversation sessions,
semantic VAD, log-probabilities) is an `error` event that says so, never silently ignored.
Noise reduction is accepted and not applied (the effective configuration says `null`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .audio import FORMAT_RATES, AudioFormat
from .turns import TurnDetection

Shape = Literal["ga", "beta"]
MAX_PROMPT_CHARS = 4000
BETA_FORMATS: dict[str, AudioFormat] = {
    "pcm16": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "g711_alaw": "audio/pcma",
}


class EventError(Exception):
    """A client event that can't be served: answered with an `error` event."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass
class SessionConfig:
    format: AudioFormat = "audio/pcm"
    model: str = ""  # as the client named it (any spelling or alias of a served model)
    language: str | None = None
    prompt: str = ""
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(
    message: str,
    *,
    code: str = "invalid_value",
    param: str | None = None,
    event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> dict[str, Any]:
    """OpenAI's `error` event (`event_id` in the error: the client event it answers)."""
    error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
    return event("error", error=error)


# --- reading updates ---------------------------------------------------------------------------


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError(f"`{param}` must be an object", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise EventError(f"`{param}` must be a number from {low:g} to {high:g}", param)
    return value


def _text(value: Any, param: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise EventError(f"`{param}` must be a string of at most {limit} characters", param)
    return value


def _turn_detection(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    value = _object(value, param)
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise EventError(
            f"`{param}.type` {kind!r} is not supported: asrd detects turns with `server_vad` "
            "(or none: `null`, and the client commits)",
            f"{param}.type",
            "unsupported_value",
        )
    turns = replace(current) if current is not None else TurnDetection()
    if "threshold" in value:
        turns.threshold = _number(value["threshold"], f"{param}.threshold", 0.0, 1.0)
    if "prefix_padding_ms" in value:
        turns.prefix_padding_ms = int(
            _number(value["prefix_padding_ms"], f"{param}.prefix_padding_ms", 0, 5000)
        )
    if "silence_duration_ms" in value:
        turns.silence_duration_ms = int(
            _number(value["silence_duration_ms"], f"{param}.silence_duration_ms", 100, 10_000)
        )
    return turns


def _transcription(value: Any, config: SessionConfig, param: str) -> None:
    if value is None:
        return  # OpenAI's "off": a transcription session always transcribes
    value = _object(value, param)
    if "model" in value and value["model"] is not None:
        config.model = _text(value["model"], f"{param}.model", 200)
    if "language" in value:
        language = value["language"]
        config.language = _text(language, f"{param}.language", 32) if language else None
    if "prompt" in value:
        config.prompt = _text(value["prompt"] or "", f"{param}.prompt", MAX_PROMPT_CHARS)
    if value.get("languages") and config.language is None:
        languages = value["languages"]
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise EventError(f"`{param}.languages` must be a list of strings", param)
        if len(languages) == 1:
            config.language = languages[0]


def _include(value: Any, param: str) -> None:
    if value:
        raise EventError(
            "`include` is not supported: asrd computes no per-token log-probabilities",
            param,
            "unsupported_value",
        )


def apply_update(config: SessionConfig, session: Any, shape: Shape) -> SessionConfig:
    """`config` changed by the `session` object of an update event (only the fields present
    change); `EventError` leaves the configuration as it was."""
    session = _object(session, "session")
    config = replace(config)
    if shape == "beta" or ("type" not in session and _looks_beta(session)):
        _apply_beta(config, session)
        return config
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise EventError(
            f"session type {kind!r} is not supported: asrd serves transcription sessions "
            '(`"type": "transcription"`, connect with `?intent=transcription`)',
            "session.type",
            "unsupported_value",
        )
    _include(session.get("include"), "session.include")
    audio = _object(session.get("audio") or {}, "session.audio")
    audio_input = _object(audio.get("input") or {}, "session.audio.input")
    if "format" in audio_input and audio_input["format"] is not None:
        config.format = _format(audio_input["format"], "session.audio.input.format")
    if "transcription" in audio_input:
        _transcription(audio_input["transcription"], config, "session.audio.input.transcription")
    if "turn_detection" in audio_input:
        param = "session.audio.input.turn_detection"
        config.turn_detection = _turn_detection(
            audio_input["turn_detection"], config.turn_detection, param
        )
    return config


def _looks_beta(session: dict[str, Any]) -> bool:
    beta = ("input_audio_format", "input_audio_transcription", "turn_detection")
    return any(name in session for name in beta)


def _format(value: Any, param: str) -> AudioFormat:
    value = _object(value, param)
    kind = value.get("type", "audio/pcm")
    if kind not in FORMAT_RATES:
        raise EventError(
            f"`{param}.type` must be `audio/pcm`, `audio/pcmu` or `audio/pcma`",
            f"{param}.type",
        )
    rate = value.get("rate")
    if rate is not None and rate != FORMAT_RATES[kind]:
        raise EventError(f"`{param}.rate` must be {FORMAT_RATES[kind]} for {kind}", f"{param}.rate")
    return kind


def _apply_beta(config: SessionConfig, session: dict[str, Any]) -> None:
    _include(session.get("include"), "session.include")
    if session.get("input_audio_format") is not None:
        name = session["input_audio_format"]
        if name not in BETA_FORMATS:
            raise EventError(
                "`session.input_audio_format` must be `pcm16`, `g711_ulaw` or `g711_alaw`",
                "session.input_audio_format",
            )
        config.format = BETA_FORMATS[name]
    if "input_audio_transcription" in session:
        _transcription(
            session["input_audio_transcription"], config, "session.input_audio_transcription"
        )
    if "turn_detection" in session:
        config.turn_detection = _turn_detection(
            session["turn_detection"], config.turn_detection, "session.turn_detection"
        )


# --- writing the configuration -----------------------------------------------------------------


def _turns_json(turns: TurnDetection | None) -> dict[str, Any] | None:
    if turns is None:
        return None
    return {
        "type": "server_vad",
        "threshold": turns.threshold,
        "prefix_padding_ms": turns.prefix_padding_ms,
        "silence_duration_ms": turns.silence_duration_ms,
    }


def session_json(config: SessionConfig, session_id: str, expires_at: int, shape: Shape) -> dict:
    """The full effective configuration, as `session.created` / `session.updated` (GA) or
    `transcription_session.created` / `.updated` (Beta) carry it."""
    transcription = {
        "model": config.model,
        "language": config.language,
        "prompt": config.prompt,
    }
    if shape == "beta":
        beta_format = {v: k for k, v in BETA_FORMATS.items()}[config.format]
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "expires_at": expires_at,
            "modalities": ["text"],
            "input_audio_format": beta_format,
            "input_audio_transcription": transcription,
            "turn_detection": _turns_json(config.turn_detection),
            "input_audio_noise_reduction": None,
            "include": [],
            "client_secret": None,
        }
    audio_format: dict[str, Any] = {"type": config.format}
    if config.format == "audio/pcm":
        audio_format["rate"] = FORMAT_RATES["audio/pcm"]
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": audio_format,
                "transcription": transcription,
                "noise_reduction": None,
                "turn_detection": _turns_json(config.turn_detection),
            }
        },
        "include": [],
    }


def user_item(item_id: str, transcript: str | None, status: str = "completed") -> dict:
    """The conversation item a committed buffer becomes: a user message with its audio."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": status,
        "content": [{"type": "input_audio", "transcript": transcript}],
    }
