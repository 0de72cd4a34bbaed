"""What a transcription is and how it is asked for: plain values, no inference code.

Routes, output formats, the task queue and the CLI's client use these without importing
CTranslate2 or faster-whisper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = False
    prompt: str | None = None
    # 0 means "start at 0 and fall back to higher temperatures" (OpenAI's documented meaning);
    # above 0, that one temperature is used.
    temperature: float = 0.0
    # Smaller batches give the first segments sooner (streaming); None means BATCH_SIZE.
    batch_size: int | None = None


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float = 1.0


@dataclass
class Segment:
    start: float
    end: float
    text: str
    id: int = 0
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None


@dataclass
class Transcript:
    segments: list[Segment]
    language: str
    duration: float
    language_probability: float = 1.0
    task: str = "transcribe"

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()
