"""The task worker: takes tasks in FIFO order and runs each on the model it asked for. A task
that fails (corrupt audio, a model error) is marked `failed` with its reason, and the next one runs:
nothing a task does can stop the loop. Only the worker whose outcome the queue recorded sends
the callback (a shared queue refuses a worker that lost its task to another), so it goes once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

import httpx
import numpy as np

from ..audio import AudioError, AudioTooLong, DecodedAudio, DecodeTooSlow, UnsupportedFormat
from ..audio_lanes import AudioLanes
from ..budget import BudgetExceeded
from ..config import Settings
from ..inputs import UrlNotAllowed, send_checked
from ..logs import short_id
from ..registry import ModelNotServed, ModelRegistry
from ..slot import ModelNotReady, ModelSlot
from ..transcript import TranscribeOptions, Transcript
from .model import Task, TaskStatus
from .queue import TaskQueue

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
BUDGET_RETRY_S = 1.0
CANCEL_CHECK_S = 0.25


def worker_name() -> str:
    """A worker's name: readable, and unique even for two processes on a host with the same
    pid (containers)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def _failure_code(exc: Exception) -> str:
    """The task's error code, as the sync routes name the same failure."""
    if isinstance(exc, UnsupportedFormat):
        return "unsupported_format"
    if isinstance(exc, AudioError):
        return "invalid_audio"
    if isinstance(exc, DecodeTooSlow):
        return "decode_too_slow"
    return "audio_too_long"


class TaskWorker:
    def __init__(
        self, queue: TaskQueue, models: ModelRegistry, audio: AudioLanes, settings: Settings
    ):
        self.queue, self.models, self.audio, self.settings = queue, models, audio, settings
        self.name: str = getattr(queue, "consumer", None) or worker_name()
        self.current: Task | None = None
        self.idle = asyncio.Event()  # set while no task runs (shutdown waits for it)
        self.idle.set()
        # Set once the start-up load is over: until then no task is taken (with a shared queue,
        # a worker still loading would fail tasks another worker could run).
        self.ready = asyncio.Event()
        self._callbacks: set[asyncio.Task] = set()
        self._stopping = False
        self._runner: asyncio.Task | None = None

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        await self.ready.wait()
        while not self._stopping:
            task = await self.queue.next()
            self.current = task
            self.idle.clear()
            recorded = False
            try:
                recorded = await self._process(task)
            except asyncio.CancelledError:
                if self._stopping and not task.cancelled:  # cut by the end of the shutdown grace
                    await self._fail_for_shutdown(task, "the server shut down while it ran")
                raise
            except Exception:  # a bug, not the task's fault: report it, keep going
                log.exception("task %s: unexpected error", short_id(task.id))
                recorded = await self.queue.fail(task, "internal_error", "the transcription failed")
            finally:
                self.current = None
                self.idle.set()
            if task.callback_url and recorded and not task.cancelled:
                callback = asyncio.create_task(self._post_callback(task))
                self._callbacks.add(callback)
                callback.add_done_callback(self._callbacks.discard)

    def info(self) -> dict:
        """What `decoder_status` and the metrics say about this worker."""
        return {
            "busy": self.current is not None,
            "task": short_id(self.current.id) if self.current else None,
            "models": [
                {"model": slot.public_id, "device": slot.device.device, "loaded": slot.loaded}
                for slot in self.models.slots
            ],
        }

    async def _process(self, task: Task) -> bool:
        """Run `task`; return whether its outcome was recorded (then its callback is due)."""
        log.info("task %s: started", short_id(task.id))
        audio, task.audio = task.audio or b"", None
        try:
            decoded = await self._decode(task, audio)
        except (AudioError, AudioTooLong, DecodeTooSlow, BudgetExceeded) as exc:
            code = _failure_code(exc)
            log.info("task %s: failed (%s)", short_id(task.id), code)
            return await self.queue.fail(task, code, str(exc))
        del audio
        if decoded is None:  # cancelled while waiting for room
            log.info("task %s: cancelled", short_id(task.id))
            return False
        samples, task.warnings = decoded.samples, list(decoded.warnings)
        del decoded
        options = TranscribeOptions(language=task.language, task=task.type)
        try:
            slot = self.models.get(task.target_model)
        except ModelNotServed as exc:  # served when it was queued (by another replica, say)
            return await self.queue.fail(task, "model_not_found", str(exc))
        try:
            transcript = await self._transcribe(task, slot, samples, options)
        except ModelNotReady as exc:
            return await self.queue.fail(task, "model_not_ready", str(exc))
        if task.cancelled or transcript is None:
            log.info("task %s: cancelled", short_id(task.id))
            return False
        # The model and device that ran it (a GPU that failed to load falls back to the CPU).
        task.used_model, task.used_device = slot.public_id, slot.device.device
        recorded = await self.queue.finish(task, transcript)
        log.info(
            "task %s: finished, %.1f s of audio in %.1f s",
            short_id(task.id),
            transcript.duration,
            (task.finished_at or 0) - (task.started_at or 0),
        )
        return recorded

    async def _transcribe(
        self, task: Task, slot: ModelSlot, samples: np.ndarray, options: TranscribeOptions
    ) -> Transcript | None:
        """The transcript, or None if the task is cancelled meanwhile (DELETE, here or on
        another replica): the worker lets go at once, and the job leaves the model at its next
        batch (streamed, so it stops there instead of running on)."""

        async def run() -> Transcript | None:
            async with contextlib.aclosing(slot.stream(samples, options)) as stream:
                async for item in stream:
                    if isinstance(item, Transcript):
                        return item
            return None

        work = asyncio.ensure_future(run())
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=CANCEL_CHECK_S)
                if task.cancelled and not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    return None
            return work.result()
        finally:
            if not work.done():  # this worker itself is cancelled (shutdown)
                work.cancel()

    async def _decode(self, task: Task, audio: bytes) -> DecodedAudio | None:
        """The task's audio, decoded once the decoded-audio budget has room (a task waits
        for it, where a request would get 503); None if the task is cancelled meanwhile."""
        while True:
            try:
                return await self.audio.decode(audio)
            except BudgetExceeded as exc:
                if not exc.fits_ever:
                    raise
            if task.cancelled:
                return None
            await asyncio.sleep(BUDGET_RETRY_S)

    async def _post_callback(self, task: Task) -> None:
        """POST the finished task to its `callback_url` (checked again: DNS may have changed)."""
        assert task.callback_url
        settings = self.settings
        body = task.to_json(position=None)
        status = "no answer"
        try:
            async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT, follow_redirects=False) as http:
                response = await send_checked(http, "POST", task.callback_url, settings, json=body)
                await response.aclose()
                status = str(response.status_code)
        except UrlNotAllowed as exc:
            status = f"refused: {exc}"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        log.info("task %s: callback answered %s", short_id(task.id), status)

    def stop(self) -> None:
        """Start no new task (the server is shutting down); the running one goes on."""
        self._stopping = True
        if self.current is None and self._runner is not None:
            # Waiting in `queue.next()`, which takes a task in the same step as it returns it:
            # cancelled here, it has taken none.
            self._runner.cancel()

    async def fail_pending(self) -> int:
        """After `stop()`: fail every task still waiting, oldest first; return how many. A
        shared queue's tasks are left to the other workers."""
        if self.queue.shared:
            return 0
        failed = 0
        while (await self.queue.counts())[TaskStatus.PENDING] > 0:
            task = await self.queue.next()  # the oldest, at once (no waiting: one is pending)
            await self._fail_for_shutdown(task, "the server shut down before it could start")
            failed += 1
        return failed

    async def _fail_for_shutdown(self, task: Task, why: str) -> None:
        if self.queue.shared:  # another worker takes it over at once
            await self.queue.release(task)
            log.info("task %s: given back to the queue (%s)", short_id(task.id), why)
            return
        await self.queue.fail(task, "shutting_down", f"{why}; submit it again")
        log.info("task %s: failed (shutting_down: %s)", short_id(task.id), why)

    async def drain_callbacks(self) -> None:
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)
