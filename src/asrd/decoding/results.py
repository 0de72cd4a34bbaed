"""What decoding gives back: per model input, per segment, per job."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowOutput:
    """The decoder's output for one model input (a window, or a pack of short windows)."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


@dataclass
class DecodedSegment:
    start: float
    end: float
    text: str
    seek: int
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[dict] | None = None


@dataclass(frozen=True)
class Decoded:
    """One model input decoded: the output to check, and its segments."""

    output: WindowOutput
    segments: list[DecodedSegment]


@dataclass(frozen=True)
class JobResult:
    segments: list[DecodedSegment]
    language: str
    language_probability: float


def compression_ratio(text: str) -> float:
    """Whisper's repetitiveness measure (faster-whisper's `get_compression_ratio`)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
