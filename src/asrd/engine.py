"""The inference engine: one Whisper model, run on a dedicated worker thread.

Every route hands decoded samples to `Engine.transcribe`, which queues the job for the worker
and awaits it, so the event loop never runs inference and concurrent requests wait their turn
instead of blocking HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import get_compression_ratio

from .audio import SAMPLE_RATE, decode_audio, probe_audio
from .config import Settings
from .models import canonical_name, choose_model_id, resolve_model

log = logging.getLogger(__name__)


class EngineState(enum.StrEnum):
    UNLOADED = "unloaded"  # not loaded (yet, or again): loads on the next request
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineNotReady(Exception):
    """The model is not loaded (yet, or it failed to load)."""


# Whisper's temperature schedule: 0 first, then higher when a window fails its checks.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


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


@dataclass
class DeviceChoice:
    device: str
    compute_type: str
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)


def choose_device(settings: Settings) -> DeviceChoice:
    """Apply `DEVICE`, `USE_GPU_IF_AVAILABLE`, `COMPUTE_TYPE` and `FLASH_ATTENTION_2`."""
    has_cuda = ctranslate2.get_cuda_device_count() > 0
    notes = []
    if settings.device == "cuda" and not has_cuda:
        raise RuntimeError("DEVICE=cuda but no usable CUDA device was found")
    auto_gpu = settings.device == "auto" and has_cuda and settings.use_gpu_if_available
    device = "cuda" if settings.device == "cuda" or auto_gpu else "cpu"
    compute_type = settings.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    flash = settings.flash_attention_2 and device == "cuda"
    if settings.flash_attention_2 and not flash:
        notes.append("FLASH_ATTENTION_2 ignored: flash attention needs a CUDA GPU")
    return DeviceChoice(device, compute_type, flash, notes)


class Engine:
    """One Whisper model on one inference thread, loaded at start-up or on demand, and
    unloaded after `UNLOAD_MODEL_AFTER_S` idle seconds (timer based: no polling)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = EngineState.UNLOADED
        self.error: str | None = None
        self.loaded_once = False
        self.device = choose_device(settings)
        self.model_id = self._model_for(self.device)
        self.model_path: Path | None = None
        self._model: WhisperModel | None = None
        self._pipeline: BatchedInferencePipeline | None = None
        self._multilingual: bool | None = None
        # One inference worker: CTranslate2 already spreads one job over CPU_THREADS cores.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-engine")
        # Decoding is separate so a request can be decoded while another is transcribed.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asrd-decode")
        self._load_lock: asyncio.Lock | None = None
        self._active_jobs = 0
        self._unload_timer: asyncio.TimerHandle | None = None

    def _model_for(self, device: DeviceChoice) -> str:
        settings = self.settings
        return choose_model_id(
            settings.model_id,
            on_cpu=device.device == "cpu",
            cpu_fallback_model=settings.cpu_fallback_model,
            max_model=settings.max_model,
            develop_mode=settings.develop_mode,
        )

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def accepting(self) -> bool:
        """Requests are taken: the model is loaded, or will be loaded on demand."""
        if self.state is EngineState.FAILED:
            return False
        return self.state is not EngineState.LOADING or self.loaded_once

    @property
    def busy(self) -> bool:
        return self._active_jobs > 0

    @property
    def multilingual(self) -> bool:
        if self._multilingual is None:  # not loaded yet: English-only models are named *.en
            return not canonical_name(self.model_id).lower().endswith(".en")
        return self._multilingual

    async def start(self) -> None:
        """At start-up: load now (LOAD_MODEL_ON_STARTUP) or leave it for the first request."""
        for note in self._settings_notes() + self.device.notes:
            log.warning(note)
        if self.settings.load_model_on_startup:
            await self.load()
            self._schedule_unload()

    async def load(self) -> None:
        """Resolve, load and warm up the model off the event loop; never raises."""
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if self.loaded or self.state is EngineState.FAILED:
                return
            self.state = EngineState.LOADING
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._worker, self.load_sync)
            except Exception as exc:
                self.state, self.error = EngineState.FAILED, str(exc)
                log.error("model %s failed to load: %s", self.model_id, exc)

    def load_sync(self) -> None:
        """Load and warm up the model on this thread (the CLI's in-process mode uses it)."""
        if self._model is not None:
            return
        started = time.perf_counter()
        self.state = EngineState.LOADING
        try:
            model = self._load_model(self.device, self.model_id)
        except Exception as exc:
            if self.device.device != "cuda" or self.settings.device == "cuda":
                raise
            # DEVICE=auto and the GPU could not take it (out of memory, driver): use the CPU.
            log.warning("loading on the GPU failed (%s); falling back to the CPU", exc)
            self.device = DeviceChoice("cpu", "int8" if self.settings.compute_type == "auto"
                                       else self.settings.compute_type)  # fmt: skip
            self.model_id = self._model_for(self.device)
            model = self._load_model(self.device, self.model_id)
        self._model, self._pipeline = model, BatchedInferencePipeline(model)
        self._multilingual = bool(model.model.is_multilingual)
        self._warm_up()
        self.state, self.loaded_once = EngineState.READY, True
        log.info("model ready in %.1f s", time.perf_counter() - started)

    def _load_model(self, device: DeviceChoice, model_id: str) -> WhisperModel:
        self.model_path = resolve_model(model_id, self.settings.cache_dir)
        log.info(
            "loading model %s from %s on %s (%s)",
            model_id,
            self.model_path,
            device.device,
            device.compute_type,
        )
        kwargs = dict(
            device=device.device,
            compute_type=device.compute_type,
            cpu_threads=self.settings.cpu_threads,
        )
        try:
            return WhisperModel(
                str(self.model_path), **kwargs, flash_attention=device.flash_attention
            )
        except Exception as exc:
            if not device.flash_attention:
                raise
            log.warning("flash attention unsupported on this GPU (%s); loading without it", exc)
            return WhisperModel(str(self.model_path), **kwargs)

    def _unload_sync(self) -> None:
        if self._active_jobs or self._model is None:
            return  # work arrived after the unload was scheduled
        self._model = self._pipeline = None
        gc.collect()
        self.state = EngineState.UNLOADED
        log.info("model unloaded after %s s idle", self.settings.unload_model_after_s)

    def _schedule_unload(self) -> None:
        delay = self.settings.unload_model_after_s
        if delay is None or self._active_jobs or not self.loaded:
            return
        if self._unload_timer:
            self._unload_timer.cancel()
        loop = asyncio.get_running_loop()
        self._unload_timer = loop.call_later(
            delay, lambda: loop.run_in_executor(self._worker, self._unload_sync)
        )

    @contextlib.asynccontextmanager
    async def _job(self) -> AsyncIterator[None]:
        """Marks work in progress: no unloading meanwhile; the model is loaded if needed."""
        if self.state is EngineState.FAILED or not self.accepting:
            raise EngineNotReady(self.error or "the model is still loading")
        self._active_jobs += 1
        if self._unload_timer:
            self._unload_timer.cancel()
            self._unload_timer = None
        try:
            if not self.loaded:
                await self.load()
                if self.state is EngineState.FAILED:
                    raise EngineNotReady(self.error or "the model failed to load")
            yield
        finally:
            self._active_jobs -= 1
            self._schedule_unload()

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
        result = self.transcribe_sync(samples, TranscribeOptions())
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

    async def probe(self, data: bytes) -> None:
        """Check, without decoding it all, that `data` holds an audio stream (`AudioError`)."""
        await asyncio.get_running_loop().run_in_executor(self._decoder, probe_audio, data)

    def check_language(self, language: str | None) -> None:
        """Raise `ValueError` if this model can't take `language` (e.g. `fr` on `tiny.en`)."""
        if language and language != "en" and not self.multilingual:
            raise ValueError(f"the model {self.model_id} is English-only")

    async def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        """The whole transcript, once every window is decoded."""
        async with self._job():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, self.transcribe_sync, samples, options)

    async def stream(
        self, samples: np.ndarray, options: TranscribeOptions
    ) -> AsyncIterator[Segment | Transcript]:
        """Segments as soon as they are decoded, then the whole `Transcript`.

        Closing the iterator early (a client that went away) stops the work at the next window.
        """
        async with self._job():
            async for item in self._stream(samples, options):
                yield item

    async def _stream(
        self, samples: np.ndarray, options: TranscribeOptions
    ) -> AsyncIterator[Segment | Transcript]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Segment | Transcript | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def on_segment(segment: Segment) -> None:
            if stop.is_set():
                raise _Stopped
            loop.call_soon_threadsafe(queue.put_nowait, segment)

        def work() -> None:
            try:
                result: Segment | Transcript | BaseException = self.transcribe_sync(
                    samples, options, on_segment
                )
            except _Stopped:
                return
            except BaseException as exc:  # handed to the awaiting request, not lost
                result = exc
            loop.call_soon_threadsafe(queue.put_nowait, result)

        future = loop.run_in_executor(self._worker, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Transcript):
                    break
        finally:
            stop.set()
            future.cancel()  # if it hasn't started yet

    def transcribe_sync(
        self,
        samples: np.ndarray,
        options: TranscribeOptions,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        """Transcribe on this thread, calling `on_segment` with each segment as it is ready."""
        if self._model is None:  # unloaded between scheduling and running: load it back
            self.load_sync()
        assert self._model is not None and self._pipeline is not None
        settings = self.settings
        duration = len(samples) / SAMPLE_RATE
        language = options.language if self.multilingual else "en"
        windows = None
        if not settings.vad_filter:  # fixed windows instead of windows cut at pauses
            step = settings.chunk_length_s
            windows = [
                {"start": start, "end": min(start + step, duration)}
                for start in range(0, max(1, int(np.ceil(duration))), step)
                if start < duration
            ]
        generated, info = self._pipeline.transcribe(
            samples,
            language=language,
            task=options.task,
            batch_size=options.batch_size or settings.batch_size,
            beam_size=settings.beam_size,
            temperature=options.temperature,
            initial_prompt=options.prompt or None,
            # Decoding with timestamps keeps Whisper from ending windows early, and gives
            # sentence-level chunks instead of one chunk per 30 s window.
            without_timestamps=False,
            word_timestamps=options.word_timestamps,
            vad_filter=settings.vad_filter,
            clip_timestamps=windows,
            chunk_length=settings.chunk_length_s,
            log_progress=False,
        )
        language = info.language or language or "en"
        kept: list[Segment] = []
        clock = _Clock(duration)
        for window in _by_window(generated):
            for segment in self._checked(samples, window, options, language):
                if not segment.text.strip():
                    continue
                segment.id = len(kept)
                clock.place(segment)
                kept.append(segment)
                if on_segment:
                    on_segment(segment)
        return Transcript(
            segments=kept,
            language=language,
            duration=duration,
            language_probability=float(info.language_probability or 0.0),
            task=options.task,
        )

    def _checked(
        self,
        samples: np.ndarray,
        window: list[Any],
        options: TranscribeOptions,
        language: str,
    ) -> list[Segment]:
        """One window's segments, after Whisper's own quality checks.

        Silence (high no-speech probability and low log-prob) is dropped. A window that looks
        like a decoding failure (repetitive text or low log-prob) is decoded again with the
        temperature fallback, as the sequential pipeline does and the batched one doesn't.
        """
        settings = self.settings
        segments = [_segment(s) for s in window]
        first = segments[0]
        if _is_silence(first, settings):
            return []
        text = "".join(s.text for s in segments)
        failed = (
            first.avg_logprob < settings.log_prob_threshold
            or get_compression_ratio(text) > settings.compression_ratio_threshold
        )
        if not failed or options.temperature > 0:
            return segments
        start = max(0.0, min(s.start for s in segments) - 0.2)
        end = min(len(samples) / SAMPLE_RATE, max(s.end for s in segments) + 0.2)
        redone, _ = self._model.transcribe(
            samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)],
            language=language,
            task=options.task,
            beam_size=settings.beam_size,
            temperature=FALLBACK_TEMPERATURES,
            compression_ratio_threshold=settings.compression_ratio_threshold,
            log_prob_threshold=settings.log_prob_threshold,
            no_speech_threshold=settings.no_speech_threshold,
            initial_prompt=options.prompt or None,
            word_timestamps=options.word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        replacement = [_segment(s, offset=start, seek_offset=first.seek) for s in redone]
        log.debug("window at %.1f s re-decoded with temperature fallback", start)
        return [s for s in replacement if not _is_silence(s, settings)]

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)


class _Stopped(Exception):
    """The streaming consumer went away."""


def _by_window(generated: Iterable[Any]) -> Iterator[list[Any]]:
    """Group the pipeline's segments by the window (`seek`) they were decoded in."""
    window: list[Any] = []
    for segment in generated:
        if window and segment.seek != window[0].seek:
            yield window
            window = []
        window.append(segment)
    if window:
        yield window


def _segment(raw: Any, offset: float = 0.0, seek_offset: int = 0) -> Segment:
    words = None
    if raw.words is not None:
        words = [
            Word(w.start + offset, w.end + offset, w.word, float(w.probability)) for w in raw.words
        ]
    return Segment(
        start=float(raw.start) + offset,
        end=float(raw.end) + offset,
        text=raw.text,
        seek=int(raw.seek) + seek_offset,
        tokens=list(raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        words=words,
    )


def _is_silence(segment: Segment, settings: Settings) -> bool:
    """Whisper's rule: likely no speech, and not confidently decoded text either."""
    return (
        segment.no_speech_prob > settings.no_speech_threshold
        and segment.avg_logprob < settings.log_prob_threshold
    )


class _Clock:
    """Keeps timestamps inside [0, duration] and non-decreasing, segment after segment."""

    def __init__(self, duration: float):
        self.duration, self.previous_end = duration, 0.0

    def clamp(self, value: float, low: float) -> float:
        return round(min(max(value, low), self.duration), 3)

    def place(self, segment: Segment) -> None:
        segment.start = self.clamp(segment.start, self.previous_end)
        segment.end = self.clamp(segment.end, segment.start)
        if segment.words:
            low = segment.start
            for word in segment.words:
                word.start = self.clamp(word.start, low)
                word.end = self.clamp(min(word.end, segment.end), word.start)
                low = word.end
        self.previous_end = segment.end
