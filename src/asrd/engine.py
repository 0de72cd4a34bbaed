"""The inference engine: one Whisper model, run on a dedicated worker thread.

Every route hands decoded samples to `Engine.transcribe`, which queues the job for the worker
and awaits it, so the event loop never runs inference and concurrent requests wait their turn
instead of blocking HTTP.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

from .audio import SAMPLE_RATE, decode_audio
from .config import Settings
from .models import resolve_model

log = logging.getLogger(__name__)

# Whisper's own rule for "this window is silence": both thresholds as in openai/whisper.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


class EngineState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineNotReady(Exception):
    """The model is not loaded (yet, or it failed to load)."""


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = False


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0


@dataclass
class Transcript:
    segments: list[Segment]
    language: str
    duration: float
    language_probability: float = 1.0

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()


@dataclass
class DeviceChoice:
    device: str
    compute_type: str
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)


def choose_device(settings: Settings) -> DeviceChoice:
    """Apply `DEVICE`, `COMPUTE_TYPE` and `FLASH_ATTENTION_2` to what this machine has."""
    has_cuda = ctranslate2.get_cuda_device_count() > 0
    notes = []
    if settings.device == "cuda" and not has_cuda:
        raise RuntimeError("DEVICE=cuda but no usable CUDA device was found")
    use_cuda = settings.device == "cuda" or (settings.device == "auto" and has_cuda)
    device = "cuda" if use_cuda else "cpu"
    compute_type = settings.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    flash = settings.flash_attention_2 and device == "cuda"
    if settings.flash_attention_2 and not flash:
        notes.append("FLASH_ATTENTION_2 ignored: flash attention needs a CUDA GPU")
    return DeviceChoice(device, compute_type, flash, notes)


class Engine:
    """Loads the model in the background and runs transcriptions one batch at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = EngineState.LOADING
        self.error: str | None = None
        self.device: DeviceChoice | None = None
        self.model_path: Path | None = None
        self._model: WhisperModel | None = None
        self._pipeline: BatchedInferencePipeline | None = None
        # One inference worker: CTranslate2 already spreads one job over CPU_THREADS cores.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-engine")
        # Decoding is separate so a request can be decoded while another is transcribed.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asrd-decode")

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def multilingual(self) -> bool:
        return bool(self._model and self._model.model.is_multilingual)

    async def load(self) -> None:
        """Resolve, load and warm up the model off the event loop; never raises."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._worker, self._load_sync)
        except Exception as exc:
            self.state, self.error = EngineState.FAILED, str(exc)
            log.error("model %s failed to load: %s", self.settings.model_id, exc)
        else:
            self.state = EngineState.READY

    def _load_sync(self) -> None:
        started = time.perf_counter()
        settings = self.settings
        for note in self._settings_notes():
            log.warning(note)
        self.device = choose_device(settings)
        for note in self.device.notes:
            log.warning(note)
        self.model_path = resolve_model(settings.model_id, settings.cache_dir)
        log.info(
            "loading model %s from %s on %s (%s)",
            settings.model_id,
            self.model_path,
            self.device.device,
            self.device.compute_type,
        )
        kwargs = dict(
            device=self.device.device,
            compute_type=self.device.compute_type,
            cpu_threads=settings.cpu_threads,
        )
        try:
            model = WhisperModel(
                str(self.model_path), **kwargs, flash_attention=self.device.flash_attention
            )
        except Exception as exc:
            if not self.device.flash_attention:
                raise
            log.warning("flash attention unsupported on this GPU (%s); loading without it", exc)
            model = WhisperModel(str(self.model_path), **kwargs)
        self._model, self._pipeline = model, BatchedInferencePipeline(model)
        self._warm_up()
        log.info("model ready in %.1f s", time.perf_counter() - started)

    def _settings_notes(self) -> list[str]:
        notes = []
        if self.settings.stride_length_s is not None:
            notes.append("STRIDE_LENGTH_S has no effect: windows are cut at speech pauses")
        if self.settings.max_new_tokens is not None:
            notes.append("MAX_NEW_TOKENS has no effect: dense speech is never truncated")
        return notes

    def _warm_up(self) -> None:
        """One real transcription of a bundled clip, so the first request pays no start-up cost."""
        clip = resources.files("asrd").joinpath("assets/warmup.flac").read_bytes()
        samples = decode_audio(clip)
        started = time.perf_counter()
        result = self._transcribe_sync(samples, TranscribeOptions())
        log.info(
            "warm-up: %.1f s of audio in %.2f s, %d words",
            result.duration,
            time.perf_counter() - started,
            len(result.text.split()),
        )

    async def decode(self, data: bytes) -> np.ndarray:
        """Decode audio bytes off the event loop (see `audio.decode_audio`)."""
        loop = asyncio.get_running_loop()
        limit = self.settings.max_audio_s
        return await loop.run_in_executor(
            self._decoder, lambda: decode_audio(data, max_duration_s=limit)
        )

    async def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        if not self.ready:
            raise EngineNotReady(self.error or "the model is still loading")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._transcribe_sync, samples, options)

    def _transcribe_sync(self, samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        assert self._model is not None and self._pipeline is not None
        settings = self.settings
        duration = len(samples) / SAMPLE_RATE
        language = options.language
        if not self._model.model.is_multilingual:
            language = "en"
        windows = None
        if not settings.vad_filter:  # fixed windows instead of windows cut at pauses
            step = settings.chunk_length_s
            windows = [
                {"start": start, "end": min(start + step, duration)}
                for start in range(0, max(1, int(np.ceil(duration))), step)
                if start < duration
            ]
        segments, info = self._pipeline.transcribe(
            samples,
            language=language,
            task=options.task,
            batch_size=settings.batch_size,
            beam_size=settings.beam_size,
            # Decoding with timestamps keeps Whisper from ending windows early, and gives
            # sentence-level chunks instead of one chunk per 30 s window.
            without_timestamps=False,
            word_timestamps=options.word_timestamps,
            vad_filter=settings.vad_filter,
            clip_timestamps=windows,
            chunk_length=settings.chunk_length_s,
            log_progress=False,
        )
        kept = [
            Segment(
                start=float(s.start),
                end=float(s.end),
                text=s.text,
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
            )
            for s in segments
            if s.text.strip() and not _is_silence(s.no_speech_prob, s.avg_logprob)
        ]
        return Transcript(
            segments=monotonic(kept, duration),
            language=info.language or (language or "en"),
            duration=duration,
            language_probability=float(info.language_probability or 0.0),
        )

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)


def _is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD


def monotonic(segments: list[Segment], duration: float) -> list[Segment]:
    """Clamp timestamps into [0, duration] and make them non-decreasing, in order."""
    previous_end = 0.0
    for segment in segments:
        start = min(max(segment.start, previous_end), duration)
        end = min(max(segment.end, start), duration)
        segment.start, segment.end = round(start, 3), round(end, 3)
        previous_end = segment.end
    return segments
