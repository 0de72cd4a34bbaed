"""The inference engine: one Whisper model, its lifecycle, and the async interface to it.

Every route hands decoded samples to `Engine.transcribe` or `Engine.stream`; the work goes to
the scheduler's thread (`scheduler.py`), which batches windows across requests, so the event
loop never runs inference and concurrent requests share the model instead of blocking HTTP.
Loading, warm-up and unloading run on a separate single worker thread; decoding and VAD on a
small pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel

from .audio import SAMPLE_RATE, DecodedAudio, decode, decode_audio, probe_audio
from .budget import MemoryBudget
from .config import Settings
from .decoding import DecodedSegment, DecodeSettings, JobResult, Scheduler, new_job
from .models import canonical_name, choose_model_id, resolve_model
from .transcript import Segment, TranscribeOptions, Transcript, Word

log = logging.getLogger(__name__)


class EngineState(enum.StrEnum):
    UNLOADED = "unloaded"  # not loaded (yet, or again): loads on the next request
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


# Audio longer than this is decoded, and has its speech found, in the long lane (one at a time).
LONG_AUDIO_S = 300


class _LongAudio(Exception):
    """Raised in the short lane by audio past LONG_AUDIO_S: it is decoded in the long lane."""


class EngineNotReady(Exception):
    """The model is not loaded (yet, or it failed to load)."""


@dataclass
class DeviceChoice:
    device: str
    compute_type: str
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)


def choose_device(settings: Settings) -> DeviceChoice:
    """Apply `DEVICE`, `USE_GPU_IF_AVAILABLE`, `COMPUTE_TYPE` and `FLASH_ATTENTION_2`."""
    from .config import ConfigError

    has_cuda = ctranslate2.get_cuda_device_count() > 0
    notes = []
    if settings.device == "cuda" and not has_cuda:
        # A configuration error (`asrd serve` exits 2 with this line), not a crash.
        raise ConfigError(
            "DEVICE=cuda but no usable CUDA device was found (no GPU, or no working driver); "
            "set DEVICE=auto to use the CPU instead"
        )
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
        self.decode_settings = self._decode_settings()
        self.scheduler = Scheduler(self.decode_settings)
        self.scheduler.start()
        self.audio_budget = MemoryBudget(settings.max_decoded_audio_bytes)
        self.on_transcribed: Callable[[float, float], None] | None = None  # metrics hook
        self._multilingual: bool | None = None
        # Loading and unloading, one at a time (inference runs on the scheduler's thread).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-engine")
        # Decoding is separate so a request can be decoded while another is transcribed.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asrd-decode")
        # Long audio, apart from the short lane above: decoded one at a time, and searched for
        # speech one at a time in a lane of its own (decoded audio waiting for its VAD holds
        # memory: it must not queue behind decodings that are waiting for memory).
        self._long_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-long")
        self._long_vad = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-long-vad")
        self._load_lock: asyncio.Lock | None = None
        self._active_jobs = 0
        self._unload_timer: asyncio.TimerHandle | None = None

    def _decode_settings(self) -> DecodeSettings:
        """Scheduler settings for the current device (batch and beam defaults differ)."""
        settings, on_cpu = self.settings, self.device.device == "cpu"
        batch_size = settings.batch_size or (6 if on_cpu else 16)
        return DecodeSettings(
            batch_size=batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            encode_batch_size=settings.encode_batch_size or (1 if on_cpu else batch_size),
            beam_size=settings.beam_size or (1 if on_cpu else 5),
            chunk_length_s=settings.chunk_length_s,
            vad_filter=settings.vad_filter,
            compression_ratio_threshold=settings.compression_ratio_threshold,
            log_prob_threshold=settings.log_prob_threshold,
            no_speech_threshold=settings.no_speech_threshold,
            pack_windows=settings.pack_short_audio,
        )

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
            self.decode_settings = self.scheduler.settings = self._decode_settings()
            model = self._load_model(self.device, self.model_id)
        self._model = self.scheduler.model = model
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

    def _unload_if_idle(self) -> None:
        """The idle timer's callback, on the event loop: no request can start while it runs,
        so the state and the model change together (/hc never says `ok` without a model)."""
        self._unload_timer = None
        if self._active_jobs or self._model is None:
            return  # work arrived after the unload was scheduled
        loop = asyncio.get_running_loop()
        if self.scheduler.job_count:  # cancelled jobs still leaving the inference thread
            self._unload_timer = loop.call_later(0.1, self._unload_if_idle)
            return
        self._model = self.scheduler.model = None
        self.state = EngineState.UNLOADED
        log.info("model unloaded after %s s idle", self.settings.unload_model_after_s)
        loop.run_in_executor(self._worker, gc.collect)  # the slow part, off the loop

    def _schedule_unload(self) -> None:
        delay = self.settings.unload_model_after_s
        if delay is None or self._active_jobs or not self.loaded:
            return
        if self._unload_timer:
            self._unload_timer.cancel()
        self._unload_timer = asyncio.get_running_loop().call_later(delay, self._unload_if_idle)

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

    async def decode(self, data: bytes, *, wait_s: float | None = None) -> DecodedAudio:
        """Decode audio bytes off the event loop, to int16 samples (see `audio.decode`),
        within MAX_AUDIO_S, MAX_DECODE_CPU_S and the server's decoded-audio budget, which
        the samples hold until they are freed (waiting up to `wait_s` for room, else
        `BudgetExceeded`). Cancelling the call stops the decoding thread too.

        Audio whose headers say it is longer than LONG_AUDIO_S is decoded in the long lane;
        audio that turns out longer than it said is decoded again there (its first minutes
        cost a second or so in the short lane): hours of audio, or a small file that holds
        them, never hold up everyone else's clips."""
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        try:
            try:
                return await loop.run_in_executor(
                    self._decoder, self._decode_sync, data, wait_s, cancelled, True
                )
            except _LongAudio:
                return await loop.run_in_executor(
                    self._long_lane, self._decode_sync, data, wait_s, cancelled, False
                )
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _decode_sync(
        self, data: bytes, wait_s: float | None, cancelled: threading.Event, short: bool
    ) -> DecodedAudio:
        reservation = self.audio_budget.reservation()

        def reserve(nbytes: int) -> None:
            if short and reservation.nbytes + nbytes > LONG_AUDIO_S * SAMPLE_RATE * 2:
                raise _LongAudio  # longer than it said
            # Long audio leaves an eighth of the budget to short clips: bombs and long files
            # can't crowd out everyone else's requests.
            keep_free = 0 if short else self.audio_budget.capacity // 8
            reservation.grow(nbytes, wait_s, keep_free)

        def declared(seconds: float) -> None:
            if short and seconds > LONG_AUDIO_S:
                raise _LongAudio  # says so: straight to the long lane

        try:
            audio = decode(
                data,
                max_duration_s=self.settings.max_audio_s,
                max_cpu_s=self.settings.max_decode_cpu_s,
                reserve=reserve,
                cancelled=cancelled,
                declared=declared,
            )
        except BaseException:
            reservation.release()
            raise
        reservation.hold_until_freed(audio.samples)
        return audio

    async def probe(self, data: bytes) -> None:
        """Check, without decoding it all, that `data` holds an audio stream (`AudioError`)."""
        await asyncio.get_running_loop().run_in_executor(self._decoder, probe_audio, data)

    def check_language(self, language: str | None) -> None:
        """Raise `ValueError` if this model can't take `language` (e.g. `fr` on `tiny.en`)."""
        if language and language != "en" and not self.multilingual:
            raise ValueError(
                f"the model {self.model_id} is English-only: it transcribes English speech "
                "only (language `en`, or none)"
            )

    def check_task(self, task: str) -> None:
        """Raise `ValueError` if this model can't do `task` (translation needs a multilingual
        model: an English-only one would invent English for speech it doesn't know)."""
        if task == "translate" and not self.multilingual:
            raise ValueError(
                f"the model {self.model_id} is English-only: it can't translate, only "
                "transcribe English speech; serve a multilingual model (e.g. `base`) to translate"
            )

    async def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        """The whole transcript, once every window is decoded."""
        transcript = None
        async for item in self.stream(samples, options, streaming=False):
            transcript = item
        assert isinstance(transcript, Transcript)
        return transcript

    async def stream(
        self, samples: np.ndarray, options: TranscribeOptions, *, streaming: bool = True
    ) -> AsyncIterator[Segment | Transcript]:
        """Segments as soon as their windows are decoded, then the whole `Transcript`.

        Closing the iterator early (a client that went away) stops the job at the next batch.
        """
        started = time.perf_counter()
        async with self._job():
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[list[DecodedSegment] | concurrent.futures.Future] = asyncio.Queue()

            def to_loop(item: list[DecodedSegment] | concurrent.futures.Future) -> None:
                # From the inference thread; the loop may be gone if the server stopped.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, item)

            on_segments = to_loop

            long_audio = len(samples) > LONG_AUDIO_S * SAMPLE_RATE
            job = await loop.run_in_executor(
                self._long_vad if long_audio else self._decoder,  # VAD runs there
                new_job,
                samples,
                options,
                self.decode_settings,
                on_segments if streaming else None,
            )
            if streaming and options.batch_size:
                job.max_per_batch = options.batch_size
            job.future.add_done_callback(to_loop)
            self.scheduler.submit(job)
            clock = _Clock(len(samples) / SAMPLE_RATE)
            placed: list[Segment] = []
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, concurrent.futures.Future):
                        if item.cancelled():
                            raise EngineNotReady("the transcription was stopped")
                        result: JobResult = item.result()  # raises the job's error
                        if not streaming:
                            for segment in result.segments:
                                placed.append(clock.place(_segment(segment, len(placed))))
                        transcript = self._transcript(result, placed, samples, options)
                        if self.on_transcribed is not None:
                            self.on_transcribed(transcript.duration, time.perf_counter() - started)
                        yield transcript
                        return
                    for decoded in item:
                        segment = clock.place(_segment(decoded, len(placed)))
                        placed.append(segment)
                        yield segment
            finally:
                job.cancel()

    def _transcript(
        self,
        result: JobResult,
        segments: list[Segment],
        samples: np.ndarray,
        options: TranscribeOptions,
    ) -> Transcript:
        return Transcript(
            segments=[s for s in segments if s.text.strip()],
            language=result.language,
            duration=len(samples) / SAMPLE_RATE,
            language_probability=result.language_probability,
            task=options.task,
        )

    def transcribe_sync(
        self,
        samples: np.ndarray,
        options: TranscribeOptions,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        """Transcribe from a thread that isn't the scheduler's (CLI, warm-up), blocking;
        `on_segment` gets each segment as soon as its window is decoded."""
        if self._model is None:
            self.load_sync()
        clock = _Clock(len(samples) / SAMPLE_RATE)
        placed: list[Segment] = []
        lock = threading.Lock()

        def on_segments(segments: list[DecodedSegment]) -> None:
            with lock:
                for decoded in segments:
                    placed.append(clock.place(_segment(decoded, len(placed))))
                    if on_segment:
                        on_segment(placed[-1])

        job = new_job(samples, options, self.decode_settings, on_segments)
        result = self.scheduler.submit(job).future.result()
        return self._transcript(result, placed, samples, options)

    def close(self) -> None:
        self.scheduler.stop()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._long_lane.shutdown(wait=False, cancel_futures=True)
        self._long_vad.shutdown(wait=False, cancel_futures=True)


def _segment(decoded: DecodedSegment, index: int) -> Segment:
    words = None
    if decoded.words is not None:
        words = [
            Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
            for w in decoded.words
        ]
    return Segment(
        start=decoded.start,
        end=decoded.end,
        text=decoded.text,
        id=index,
        seek=decoded.seek,
        tokens=decoded.tokens,
        temperature=decoded.temperature,
        avg_logprob=decoded.avg_logprob,
        compression_ratio=decoded.compression_ratio,
        no_speech_prob=decoded.no_speech_prob,
        words=words,
    )


class _Clock:
    """Keeps timestamps inside [0, duration] and non-decreasing, segment after segment."""

    def __init__(self, duration: float):
        self.duration, self.previous_end = duration, 0.0

    def clamp(self, value: float, low: float) -> float:
        return round(min(max(value, low), self.duration), 3)

    def place(self, segment: Segment) -> Segment:
        segment.start = self.clamp(segment.start, self.previous_end)
        segment.end = self.clamp(segment.end, segment.start)
        if segment.words:
            low = segment.start
            for word in segment.words:
                word.start = self.clamp(word.start, low)
                word.end = self.clamp(min(word.end, segment.end), word.start)
                low = word.end
        self.previous_end = segment.end
        return segment
