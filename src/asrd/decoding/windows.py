"""Jobs and their windows: a request's audio cut into windows of at most 30 s at speech
pauses (Silero VAD), and which of a window's speech its decoded segments leave uncovered."""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from faster_whisper.vad import VadOptions

from ..audio import SAMPLE_RATE
from ..transcript import TranscribeOptions
from ..vad import speech_spans
from .results import Decoded, DecodedSegment
from .settings import WINDOW_S, DecodeSettings

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

MAX_GAP_S = 2.0  # a longer pause starts a new window (the silence isn't decoded)
COVERAGE_SLACK_S = 0.3  # speech this close to a decoded segment counts as covered
MIN_UNCOVERED_S = 0.5  # uncovered speech pieces shorter than this are ignored

Span = tuple[float, float]
WindowCut = tuple[float, float, list[Span]]  # start, end, speech spans (seconds)


@dataclass(eq=False)
class Window:
    job: Job
    start: float  # seconds, in the request's audio
    end: float
    speech: list[Span]
    parent: Window | None = None
    children: list[Window] = field(default_factory=list)  # second passes on uncovered speech
    temperature_index: int = 0
    candidates: list[Decoded] = field(default_factory=list)  # failed decodings, kept
    final: list[DecodedSegment] | None = None
    solo: bool = False  # never packed with other windows (again)

    @property
    def complete(self) -> bool:
        return self.final is not None and all(child.complete for child in self.children)

    def segments(self) -> list[DecodedSegment]:
        found = list(self.final or [])
        for child in self.children:
            found += child.segments()
        return sorted(found, key=lambda s: s.start)


NO_AUDIO = np.zeros(0, dtype=np.int16)


@dataclass(eq=False)
class Job:
    samples: np.ndarray
    options: TranscribeOptions
    windows: list[Window]
    on_segments: Callable[[list[DecodedSegment]], None] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    pending: deque[Window] = field(default_factory=deque)  # windows waiting to be decoded
    language: str | None = None
    language_probability: float = 1.0
    tokenizer: Tokenizer | None = None  # once the language is known
    emitted: int = 0  # windows handed out so far, in order
    results: list[DecodedSegment] = field(default_factory=list)
    cancelled: bool = False
    max_per_batch: int | None = None  # streamed jobs: smaller bites, so text comes out sooner
    # Low priority: live captions' partial re-decodes fill the room other jobs leave.
    background: bool = False

    def cancel(self) -> None:
        """Stop at the next batch; the future is cancelled."""
        self.cancelled = True

    def release_audio(self) -> None:
        """The scheduler is done with this job: let go of its audio now. (Windows and jobs
        refer to each other, so without this the samples would wait for the cyclic garbage
        collector, and the decoded-audio budget with them.)"""
        self.samples = NO_AUDIO

    def window_at(self, start: float, end: float, speech: list[Span]) -> Window:
        return Window(self, start, end, speech)


def new_job(
    samples: np.ndarray,
    options: TranscribeOptions,
    settings: DecodeSettings,
    on_segments: Callable[[list[DecodedSegment]], None] | None = None,
    speech: list[Span] | None = None,
) -> Job:
    """A job with its windows cut (VAD runs here: call it off the event loop). `speech`: the
    speech spans (seconds) when the caller knows them already (live turns): no VAD then."""
    job = Job(samples=samples, options=options, windows=[], on_segments=on_segments)
    if speech is None:
        cuts = speech_windows(samples, settings)
    else:
        duration = len(samples) / SAMPLE_RATE
        cuts = pack_spans(speech, min(settings.chunk_length_s, WINDOW_S), duration)
    job.windows = [job.window_at(s, e, sp) for s, e, sp in cuts]
    return job


def speech_windows(samples: np.ndarray, settings: DecodeSettings) -> list[WindowCut]:
    """(start, end, speech spans) of the windows to decode, in seconds, in order.

    With VAD: speech spans packed into windows of at most `chunk_length_s`, a new window at
    each pause over `MAX_GAP_S` (long silences are never decoded). Without: fixed windows.
    """
    duration = len(samples) / SAMPLE_RATE
    limit = min(settings.chunk_length_s, WINDOW_S)
    if not settings.vad_filter:
        starts = np.arange(0, duration, limit)
        return [(s, min(s + limit, duration), [(s, min(s + limit, duration))]) for s in starts]
    vad = VadOptions(max_speech_duration_s=limit, min_silence_duration_ms=160)
    # One pass over the whole audio (cutting it into independent blocks for VAD cost words at
    # the block edges: base WER 4.9% -> 8.7% with 30 s blocks), in bounded memory.
    spans = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in speech_spans(samples, vad)]
    return pack_spans(spans, limit, duration)


def pack_spans(spans: list[Span], limit: float, duration: float) -> list[WindowCut]:
    """Speech spans gathered into windows of at most `limit` seconds, cut at long pauses."""
    windows: list[WindowCut] = []
    for start, end in spans:
        while end - start > limit:  # VAD already splits at the limit; be safe anyway
            windows.append((start, start + limit, [(start, start + limit)]))
            start += limit
        if windows:
            w_start, w_end, w_speech = windows[-1]
            if end - w_start <= limit and start - w_end <= MAX_GAP_S:
                windows[-1] = (w_start, max(w_end, end), [*w_speech, (start, end)])
                continue
        windows.append((start, end, [(start, end)]))
    return [(round(s, 2), min(round(e, 2), duration), sp) for s, e, sp in windows]


def uncovered(window: Window, segments: list[DecodedSegment]) -> list[Span]:
    """The window's speech that none of `segments` covers (pieces of MIN_UNCOVERED_S or more)."""
    covered = sorted((s.start - COVERAGE_SLACK_S, s.end + COVERAGE_SLACK_S) for s in segments)
    pieces = []
    for start, end in window.speech:
        cursor = start
        for c_start, c_end in covered:
            if c_end <= cursor or c_start >= end:
                continue
            if c_start > cursor:
                pieces.append((cursor, c_start))
            cursor = max(cursor, c_end)
        if cursor < end:
            pieces.append((cursor, end))
    return [(s, e) for s, e in pieces if e - s >= MIN_UNCOVERED_S]
