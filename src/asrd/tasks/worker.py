"""The task worker: takes tasks in FIFO order and runs them on the engine. A task that fails
(corrupt audio, an engine error) is marked `failed` with its reason, and the next one runs:
nothing a task does can stop the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from ..audio import AudioError, AudioTooLong
from ..engine import Engine, EngineNotReady, TranscribeOptions, Transcript
from ..inputs import UrlNotAllowed, send_checked
from ..logs import short_id
from .model import Task
from .queue import TaskQueue

log = logging.getLogger(__name__)

CALLBACK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class TaskWorker:
    def __init__(self, queue: TaskQueue, engine: Engine):
        self.queue, self.engine = queue, engine
        self.current: Task | None = None
        self.idle = asyncio.Event()  # set while no task runs (shutdown waits for it)
        self.idle.set()
        self._callbacks: set[asyncio.Task] = set()

    async def run(self) -> None:
        while True:
            task = await self.queue.next()
            self.current = task
            self.idle.clear()
            try:
                await self._process(task)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not the task's fault: report it, keep going
                log.exception("task %s: unexpected error", short_id(task.id))
                await self.queue.fail(task, "internal_error", "the transcription failed")
            finally:
                self.current = None
                self.idle.set()
            if task.callback_url and not task.cancelled:
                callback = asyncio.create_task(self._post_callback(task))
                self._callbacks.add(callback)
                callback.add_done_callback(self._callbacks.discard)

    async def _process(self, task: Task) -> None:
        log.info("task %s: started", short_id(task.id))
        audio, task.audio = task.audio or b"", None
        try:
            samples = await self.engine.decode(audio)
        except (AudioError, AudioTooLong) as exc:
            code = "invalid_audio" if isinstance(exc, AudioError) else "audio_too_long"
            await self.queue.fail(task, code, str(exc))
            log.info("task %s: failed (%s)", short_id(task.id), code)
            return
        del audio
        options = TranscribeOptions(language=task.language, task=task.type)
        transcript: Transcript | None = None
        try:
            # Streamed, so a cancelled task stops at the next window instead of running on.
            async with contextlib.aclosing(self.engine.stream(samples, options)) as stream:
                async for item in stream:
                    if task.cancelled:
                        break
                    if isinstance(item, Transcript):
                        transcript = item
        except EngineNotReady as exc:
            await self.queue.fail(task, "model_not_ready", str(exc))
            return
        if task.cancelled or transcript is None:
            log.info("task %s: cancelled", short_id(task.id))
            return
        await self.queue.finish(task, transcript)
        log.info(
            "task %s: finished, %.1f s of audio in %.1f s",
            short_id(task.id),
            transcript.duration,
            (task.finished_at or 0) - (task.started_at or 0),
        )

    async def _post_callback(self, task: Task) -> None:
        """POST the finished task to its `callback_url` (checked again: DNS may have changed)."""
        assert task.callback_url
        settings = self.engine.settings
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

    async def drain_callbacks(self) -> None:
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)
