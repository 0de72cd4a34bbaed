"""One served model: its lifecycle (load on demand, warm-up, GPU to CPU fallback, unload
after its idle TTL, never while it has work) and the async interface to its scheduler.

Every route hands decoded samples to `ModelSlot.transcribe` or `ModelSlot.stream`; the work
goes to the slot's scheduler thread (`decoding/`), which batches windows across requests, so
the event loop never runs inference. Loading and unloading run on the registry's loader thread.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from .audio import SAMPLE_RATE, decode_audio
from .audio_lanes import AudioLanes
from .compute import ComputeGate
from .config import Settings
from .decoding import DecodedSegment, Job, JobResult, Scheduler, new_job, release_free_memory
from .devices import DeviceChoice, cpu_instead, decode_settings
from .languages import LANGUAGES
from .models import canonical_name, estimated_size, public_model_id, resolve_model
from .transcript import Segment, TranscribeOptions, Transcript, Word

log = logging.getLogger(__name__)


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"  # not loaded (yet, or again): loads on the next request
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # the default model only: it can't be loaded (`/hc` says so)


class ModelNotReady(Exception):
    """The model is not loaded and can't be now (still loading, failed, or no room)."""

    def __init__(self, message: str, *, retry_after_s: int | None = 5):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Priority:
    """A job's priority that can change while it waits: a live turn's partial re-decode that
    turns out to be its final decode is promoted to normal priority."""

    background: bool = True
    job: Job | None = None

    def promote(self) -> None:
        self.background = False
        if self.job is not None:
            self.job.background = False  # read by the scheduler at its next pick


class ModelInUse(Exception):
    """The model has work: it can't be unloaded now."""


class ModelSlot:
    """A served model, loaded or not, with its own scheduler (batching across requests)."""

    def __init__(
        self,
        model_id: str,
        *,
        settings: Settings,
        device: DeviceChoice,
        audio: AudioLanes,
        gate: Callable[[DeviceChoice], ComputeGate],
        loader: ThreadPoolExecutor,
        ttl_s: float | None,
        is_default: bool = False,
    ):
        self.model_id, self.settings, self.device = model_id, settings, device
        self.audio, self.ttl_s, self.is_default = audio, ttl_s, is_default
        self._gate, self._loader = gate, loader
        self.state = ModelState.UNLOADED
        self.error: str | None = None
        self.loaded_once = False
        self.last_used = 0.0  # monotonic; for least-recently-used eviction
        self.model_path: Path | None = None
        self.size_bytes: int | None = None  # the weights on disk, once found
        self._model: WhisperModel | None = None
        self._multilingual: bool | None = None
        self.decode_settings = decode_settings(settings, device)
        self.scheduler = Scheduler(self.decode_settings, gate(device))
        self.scheduler.start()
        self._active_jobs = 0
        self._unload_timer: asyncio.TimerHandle | None = None
        self._load_task: asyncio.Task | None = None
        # The default model's load at start-up: until it is done, requests get 503 (the seed's
        # behaviour: `/hc` is 503 too, so no load balancer sends them).
        self.starting = False
        # Called before a load, on the event loop: the registry makes room (or refuses).
        self.before_load: Callable[[ModelSlot], Awaitable[None]] | None = None
        self.on_transcribed: Callable[[float, float], None] | None = None  # metrics hooks
        self.on_load: Callable[[float], None] | None = None

    # --- what it is ----------------------------------------------------------------------

    @property
    def public_id(self) -> str:
        return public_model_id(self.model_id)

    @property
    def weights_bytes(self) -> int:
        """The size of its weights: measured once found on disk, estimated from its name
        before (for MAX_LOADED_MODELS_MB)."""
        return self.size_bytes if self.size_bytes is not None else estimated_size(self.model_id)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def accepting(self) -> bool:
        """Requests are taken: the model is loaded, or will be loaded on demand."""
        return self.state is not ModelState.FAILED and not self.starting

    @property
    def loading(self) -> bool:
        return self._load_task is not None and not self._load_task.done()

    @property
    def busy(self) -> bool:
        return self._active_jobs > 0

    @property
    def multilingual(self) -> bool:
        if self._multilingual is None:  # not loaded yet: English-only models are named *.en
            return not canonical_name(self.model_id).lower().endswith(".en")
        return self._multilingual

    @property
    def tasks(self) -> list[str]:
        return ["transcribe", "translate"] if self.multilingual else ["transcribe"]

    @property
    def languages(self) -> list[str]:
        return sorted(LANGUAGES) if self.multilingual else ["en"]

    def check_language(self, language: str | None) -> None:
        """Raise `ValueError` if this model can't take `language` (e.g. `fr` on `tiny.en`)."""
        if language and language != "en" and not self.multilingual:
            raise ValueError(
                f"the model {self.public_id} is English-only: it transcribes English speech "
                "only (language `en`, or none)"
            )

    def check_task(self, task: str) -> None:
        """Raise `ValueError` if this model can't do `task` (translation needs a multilingual
        model: an English-only one would invent English for speech it doesn't know)."""
        if task == "translate" and not self.multilingual:
            raise ValueError(
                f"the model {self.public_id} is English-only: it can't translate, only "
                "transcribe English speech; ask for a multilingual model (e.g. `base`) to "
                "translate"
            )

    # --- loading and unloading -----------------------------------------------------------

    async def load(self) -> None:
        """Load and warm up off the event loop (one load at a time per slot); raises
        `ModelNotReady` if it fails or there is no room for it."""
        if self.loaded:
            return
        if self._load_task is None:
            self._load_task = asyncio.create_task(self._load())
        try:
            # Shielded: a request that stops waiting (its client left, its deadline passed)
            # leaves the load to finish for the next one.
            await asyncio.shield(self._load_task)
        finally:
            if self._load_task is not None and self._load_task.done():
                self._load_task = None

    async def _load(self) -> None:
        if self.before_load is not None:
            await self.before_load(self)
        self.state, self.error = ModelState.LOADING, None
        try:
            await asyncio.get_running_loop().run_in_executor(self._loader, self.load_sync)
        except Exception as exc:
            self.error = str(exc)
            # The default model's failure is for `/hc` and the CLI to report; another model is
            # tried again by its next request.
            self.state = ModelState.FAILED if self.is_default else ModelState.UNLOADED
            log.error("model %s failed to load: %s", self.public_id, exc)
            raise ModelNotReady(f"the model {self.public_id} failed to load: {exc}") from None
        self._schedule_unload()

    def load_sync(self) -> None:
        """Load and warm up the model on this thread (the CLI's in-process mode uses it)."""
        if self._model is not None:
            return
        started = time.perf_counter()
        self.state = ModelState.LOADING
        try:
            model = self._load_model(self.device)
        except Exception as exc:
            if self.device.device != "cuda" or self.settings.device == "cuda":
                raise
            # DEVICE=auto and the GPU could not take it (out of memory, driver): use the CPU.
            log.warning("loading %s on the GPU failed (%s); falling back to the CPU",
                        self.public_id, exc)  # fmt: skip
            self.device = cpu_instead(self.settings)
            self.decode_settings = self.scheduler.settings = decode_settings(
                self.settings, self.device
            )
            self.scheduler.gate = self._gate(self.device)
            model = self._load_model(self.device)
        self._model = self.scheduler.model = model
        self._multilingual = bool(model.model.is_multilingual)
        self._warm_up()
        self.state, self.loaded_once = ModelState.READY, True
        elapsed = time.perf_counter() - started
        log.info("model %s ready in %.1f s", self.public_id, elapsed)
        if self.on_load is not None:
            self.on_load(elapsed)

    def _load_model(self, device: DeviceChoice) -> WhisperModel:
        self.model_path = resolve_model(
            self.model_id, self.settings.cache_dir, baked_dir=self.settings.baked_models_dir
        )
        with contextlib.suppress(OSError):
            self.size_bytes = (self.model_path / "model.bin").stat().st_size
        log.info("loading model %s from %s on %s (%s)", self.public_id, self.model_path,
                 device.device, device.compute_type)  # fmt: skip
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

    def _warm_up(self) -> None:
        """One real transcription of a bundled clip, so the first request pays no start-up cost."""
        clip = resources.files("asrd").joinpath("assets/warmup.flac").read_bytes()
        samples = decode_audio(clip)
        started = time.perf_counter()
        result = self.transcribe_sync(samples, TranscribeOptions())
        log.info("warm-up of %s: %.1f s of audio in %.2f s, %d words", self.public_id,
                 result.duration, time.perf_counter() - started,
                 len(result.text.split()))  # fmt: skip

    def unload(self) -> None:
        """Unload now, on the event loop (no request starts meanwhile, so the state and the
        model change together); `ModelInUse` if it has work."""
        if self._active_jobs or self.scheduler.job_count or self.loading:
            raise ModelInUse(f"the model {self.public_id} is in use")
        if self._unload_timer:
            self._unload_timer.cancel()
            self._unload_timer = None
        if self._model is None:
            return
        self._model = self.scheduler.model = None
        self.state = ModelState.UNLOADED
        # The slow part (freeing the weights, giving the memory back), off the loop.
        asyncio.get_running_loop().run_in_executor(self._loader, _free_memory)

    def _unload_if_idle(self) -> None:
        """The idle timer's callback."""
        self._unload_timer = None
        if self._active_jobs or self._model is None:
            return  # work arrived after the unload was scheduled
        if self.scheduler.job_count or self.loading:  # cancelled jobs still leaving the thread
            self._unload_timer = asyncio.get_running_loop().call_later(0.1, self._unload_if_idle)
            return
        self.unload()
        log.info("model unloaded after %s s idle: %s", self.ttl_s, self.public_id)

    def _schedule_unload(self) -> None:
        if self.ttl_s is None or self._active_jobs or not self.loaded:
            return
        if self._unload_timer:
            self._unload_timer.cancel()
        self._unload_timer = asyncio.get_running_loop().call_later(self.ttl_s, self._unload_if_idle)

    @contextlib.asynccontextmanager
    async def _job(self) -> AsyncIterator[None]:
        """Marks work in progress: no unloading meanwhile; the model is loaded if needed,
        waiting at most MODEL_LOAD_TIMEOUT_S."""
        if self.state is ModelState.FAILED:
            raise ModelNotReady(self.error or "the model failed to load", retry_after_s=None)
        if self.starting:
            raise ModelNotReady("the model is not loaded yet")
        self._active_jobs += 1
        self.last_used = time.monotonic()
        if self._unload_timer:
            self._unload_timer.cancel()
            self._unload_timer = None
        try:
            if not self.loaded:
                timeout = self.settings.model_load_timeout_s
                try:
                    await asyncio.wait_for(self.load(), timeout)
                except TimeoutError:
                    raise ModelNotReady(
                        f"the model {self.public_id} is still loading after {timeout:g} s "
                        "(MODEL_LOAD_TIMEOUT_S)",
                        retry_after_s=30,
                    ) from None
            yield
        finally:
            self._active_jobs -= 1
            self.last_used = time.monotonic()
            self._schedule_unload()

    # --- transcribing ----------------------------------------------------------------------

    def in_use(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the model for a while (a live session between its turns): loaded if needed,
        never unloaded meanwhile."""
        return self._job()

    async def transcribe(
        self,
        samples: np.ndarray,
        options: TranscribeOptions,
        *,
        background: bool | Priority = False,
        speech: list[tuple[float, float]] | None = None,
    ) -> Transcript:
        """The whole transcript, once every window is decoded. `background`: at low priority
        (live captions' partial re-decodes; a `Priority` can promote it later); `speech`: the
        speech spans (seconds) when known, so no VAD runs."""
        transcript = None
        async for item in self.stream(
            samples, options, streaming=False, background=background, speech=speech
        ):
            transcript = item
        assert isinstance(transcript, Transcript)
        return transcript

    async def stream(
        self,
        samples: np.ndarray,
        options: TranscribeOptions,
        *,
        streaming: bool = True,
        background: bool | Priority = False,
        speech: list[tuple[float, float]] | None = None,
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

            settings = self.decode_settings
            listener = to_loop if streaming else None
            if speech is None:
                job = await self.audio.find_speech(
                    samples, lambda audio: new_job(audio, options, settings, listener)
                )
            else:
                job = new_job(samples, options, settings, listener, speech)
            if isinstance(background, Priority):
                background.job = job
                job.background = background.background
            else:
                job.background = background
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
                            raise ModelNotReady("the transcription was stopped")
                        result: JobResult = item.result()  # raises the job's error
                        if not streaming:
                            for segment in result.segments:
                                placed.append(clock.place(_segment(segment, len(placed))))
                        transcript = _transcript(result, placed, samples, options)
                        if self.on_transcribed is not None and background is False:
                            self.on_transcribed(transcript.duration, time.perf_counter() - started)
                        yield transcript
                        return
                    for decoded in item:
                        segment = clock.place(_segment(decoded, len(placed)))
                        placed.append(segment)
                        yield segment
            finally:
                job.cancel()

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
        return _transcript(result, placed, samples, options)

    def close(self) -> None:
        self.scheduler.stop()


def _free_memory() -> None:
    gc.collect()
    release_free_memory()


def _transcript(
    result: JobResult, segments: list[Segment], samples: np.ndarray, options: TranscribeOptions
) -> Transcript:
    return Transcript(
        segments=[s for s in segments if s.text.strip()],
        language=result.language,
        duration=len(samples) / SAMPLE_RATE,
        language_probability=result.language_probability,
        task=options.task,
    )


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
