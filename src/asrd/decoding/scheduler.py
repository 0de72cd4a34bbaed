"""The decoding scheduler: windows from every request, batched together, checked like the
sequential pipeline checks them (`checks`).

Each request's audio is cut into windows at speech pauses (`windows`). One thread decodes
them in batches of up to `batch_size`, taken round-robin across the requests waiting
(`batching`), after a short gathering wait (`batch_wait_ms`); short windows share model
inputs (`packing`). Results are put back in order per request, with absolute timestamps, and
handed out window by window as they complete (streaming).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..compute import ComputeGate
from . import language
from .batching import RoundRobin, batch_key, newcomers, pick_batch, temperature
from .memory import release_free_memory
from .packing import Pack, pack_batch
from .queues import drop_if_cancelled, emit, fail, settle, swap_in, take
from .results import Decoded, JobResult
from .settings import DecodeSettings
from .timing import StageClock
from .whisper import Whisper
from .windows import Job, Window

if TYPE_CHECKING:
    from ctranslate2 import StorageView
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

IDLE_TRIM_AFTER_S = 1.0


class Scheduler:
    """The one thread that runs a model: batches of windows from every job. Models sharing
    a CPU share a `gate` (a private one if None) and take turns, batch by batch."""

    def __init__(self, settings: DecodeSettings, gate: ComputeGate | None = None):
        self.settings = settings
        self.gate = gate if gate is not None else ComputeGate()
        self.model: WhisperModel | None = None
        self._jobs: list[Job] = []
        self._intake: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._turns = RoundRobin()
        self._background_turns = RoundRobin()
        self._stopped = False
        self._in_flight: list[Window] = []
        self._thread: threading.Thread | None = None
        self.on_batch: Callable[[int], None] | None = None  # metrics hook
        self.clock = StageClock()
        self.batches = 0
        self.batch_windows = 0
        self.inputs = 0  # model inputs encoded for batches (a pack of short windows is one)

    # --- called from other threads -----------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler's thread (once: later calls do nothing)."""
        with self._wakeup:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="asrd-scheduler",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._wakeup:
            self._intake.append(job)
            self._wakeup.notify()
        return job

    @property
    def job_count(self) -> int:
        """Transcriptions holding audio in the scheduler (waiting or being decoded)."""
        return len(self._jobs) + len(self._intake)

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()

    # --- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        trimmed = True
        while not self._stopped:
            arrived = self._wait_for_work(trimmed)
            trimmed = arrived is None
            if arrived is None:
                release_free_memory()  # outside the lock: submitters never wait for it
                continue
            try:
                self._step(arrived)
            except Exception:  # a bug: log it, fail nothing else, keep the thread alive
                log.exception("the scheduler hit an unexpected error")
            finally:
                # Hold no job between steps: an idle server keeps no request's audio.
                arrived.clear()
                self._in_flight = []
        for job in self._jobs + list(self._intake):
            job.future.cancel()

    def _wait_for_work(self, trimmed: bool) -> list[Job] | None:
        """The jobs arrived since the last step (maybe none: windows are waiting); None if
        stopped, or idle for IDLE_TRIM_AFTER_S (once idle, it wakes up once to give memory
        back)."""
        with self._wakeup:
            busy = self._wakeup.wait_for(
                lambda: self._stopped or self._intake or self._queued(),
                None if trimmed else IDLE_TRIM_AFTER_S,
            )
            if self._stopped or not busy:
                return None
            if self._intake and self._queued() < self.settings.batch_size:
                # New work arrived: give its neighbours a moment to arrive too.
                with self.clock.stage("gather"):
                    self._wakeup.wait(self.settings.batch_wait_ms / 1000)
            arrived = list(self._intake)
            self._intake.clear()
            return arrived

    def _queued(self) -> int:
        return sum(len(job.pending) for job in self._jobs)

    def _step(self, arrived: list[Job]) -> None:
        # One turn on the compute per batch (admission may detect a language: model work too).
        with self.clock.step(), self._turn():
            for job in arrived:
                self._admit(job)
            batch = self._pick_batch()
            if batch:
                self._decode(batch)
        # A job cancelled mid-batch may have no window left to pick: let go of it (and its
        # audio) now, not when the next request comes.
        self._drop_cancelled()

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """A turn on the compute; the wait for it is timed."""
        asked = time.perf_counter()
        with self.gate.turn():
            self.clock.add("gate", time.perf_counter() - asked)
            yield

    def _whisper(self) -> Whisper:
        if self.model is None:
            raise RuntimeError("the model is not loaded")
        return Whisper(self.model, self.clock)

    # --- admission ---------------------------------------------------------------------------

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            job.release_audio()
            job.future.cancel()
            return
        try:
            language.prepare(job, self._whisper())
        except Exception as exc:  # the job's fault or the model's: fail it, not the thread
            log.exception("a transcription job failed to start")
            job.release_audio()
            fail(job, exc)
            return
        if not job.windows:
            self._finish(job)
            return
        job.pending.extend(job.windows)
        self._jobs.append(job)

    def _drop_cancelled(self) -> None:
        self._jobs = [job for job in self._jobs if not drop_if_cancelled(job)]

    # --- a batch -----------------------------------------------------------------------------

    def _pick_batch(self) -> list[Window]:
        self._drop_cancelled()
        active = [job for job in self._jobs if job.pending and not job.background]
        background = [job for job in self._jobs if job.pending and job.background]
        if not active and not background:
            return []
        order = self._turns.order(active) if active else []
        later = self._background_turns.order(background) if background else []
        batch = pick_batch(order, self.settings, later)
        take(batch)
        return batch

    def _decode(self, batch: list[Window]) -> None:
        self._in_flight = list(batch)
        started = time.perf_counter()
        try:
            whisper = self._whisper()
            packs, encoder_output = self._encode(whisper, pack_batch(batch, self.settings))
            language.detect(packs, whisper, encoder_output)
            decoded = whisper.generate(packs, encoder_output, temperature(batch[0]), self.settings)
        except Exception as exc:
            log.exception("decoding a batch of %d windows failed", len(batch))
            for job in {window.job for window in self._in_flight}:
                fail(job, exc)
            return
        windows = sum(map(len, packs))
        log.debug("batch of %d windows in %d inputs at temperature %.1f: %.2f s (parts %s)",
                  windows, len(packs), temperature(batch[0]), time.perf_counter() - started,
                  [len(p) for p in packs])  # fmt: skip
        self.batches += 1
        self.batch_windows += windows
        self.inputs += len(packs)
        if self.on_batch is not None:
            self.on_batch(windows)
        with self.clock.stage("check"):
            self._settle(packs, decoded)

    def _settle(self, packs: list[Pack], decoded: list[Decoded]) -> None:
        """Check the decoded inputs, then hand out what is complete, in order."""
        for pack, result in zip(packs, decoded, strict=True):
            try:
                settle(pack, result, self.settings)
            except Exception as exc:
                log.exception("checking a window failed")
                for window in pack:
                    fail(window.job, exc)
        for job in {window.job for pack in packs for window in pack}:
            if not job.cancelled and emit(job):
                self._finish(job)

    def _encode(self, whisper: Whisper, packs: list[Pack]) -> tuple[list[Pack], StorageView]:
        """Encode the batch's inputs. On a CPU they are encoded one at a time, and requests
        that arrive meanwhile join this batch at the next pass: the long requests' inputs not
        encoded yet go back to their queues to make room, so a newcomer waits at most one
        encoder pass, not a whole batch of a long file's windows."""
        if not whisper.encodes_one_at_a_time(self.settings):
            return packs, whisper.encode(packs, self.settings.encode_batch_size)

        def room_for_newcomers(waiting: list[Pack], done: list[Pack]) -> list[Pack]:
            if not self._intake:
                return waiting
            return self._let_newcomers_in(waiting, done)

        return whisper.encode_each(packs, room_for_newcomers)

    def _let_newcomers_in(self, waiting: list[Pack], done: list[Pack]) -> list[Pack]:
        """Admit newcomers; their first windows join this batch where `swap_in` finds them
        room (a short pack not encoded yet, or a long request's input not encoded yet)."""
        with self._wakeup:
            arrived = list(self._intake)
            self._intake.clear()
        for job in arrived:
            self._admit(job)
        # Background jobs (partial re-decodes) wait for the next batch: they never push a
        # request's input out of this one.
        admitted = [job for job in arrived if job in self._jobs and not job.background]
        joining = [job.pending.popleft() for job in newcomers(admitted, batch_key(done[0][0]))]
        if not joining:
            return waiting
        encode_next = swap_in(joining, waiting, done, self.settings)
        self._in_flight += [window for pack in encode_next for window in pack if window in joining]
        return encode_next

    def _finish(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        job.release_audio()
        if not job.future.done():
            job.future.set_result(
                JobResult(job.results, job.language or "en", job.language_probability)
            )
