"""Sync requests served by the workers through Redis (SYNC_VIA_WORKERS=1): `/asr` and
`/v1/audio/*` on a thin API replica, the model on a pool of GPU workers.

The API replica decodes the upload as usual (limits, errors: all its own), then hands the
samples (16-bit PCM) to whichever worker takes them first and relays what the worker streams
back. The routes don't know: they get a `RemoteSlot` where they would get a model's slot.

Keys, under REDIS_PREFIX (`P`), for a request `<id>`:
- `P:sq` the stream of requests (group `workers`): id, model, options;
- `P:sa:<id>` its samples, until a worker takes them (the take is one script that deletes
  them, so exactly one worker takes a request, and an API replica giving up on a request that
  nobody took is told so atomically: 503, never a late double);
- `P:sr:<id>` the answer stream: `taken`, then `segment`s, `done` (the transcript) or `error`,
  with a `ping` every second while the worker works (no message for TASK_LEASE_S: the worker
  died, the client gets a 503 at once instead of waiting forever);
- `P:sx:<id>` set by the API replica when its client hangs up: the worker stops at once.
A request is never retried once taken (its client waits on a connection; it retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import numpy as np
from redis.exceptions import RedisError, ResponseError

from ..logs import short_id
from ..registry import ModelNotServed, ModelRegistry
from ..slot import ModelNotReady
from ..transcript import Segment, TranscribeOptions, Transcript, Word
from .records import transcript_from_dict
from .redis_queue import GROUP, READ_BLOCK_MS, RedisTaskQueue, unavailable

log = logging.getLogger(__name__)

PING_S = 1.0
ANSWER_TTL_MS = 120_000  # an answer stream nobody reads any more is dropped after this
MAX_SYNC_JOBS = 4  # per worker at once; the scheduler batches them together

_TAKE = """
-- KEYS: samples, answer   ARGV: ttl_ms
local samples = redis.call('GET', KEYS[1])
if not samples then return false end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], '*', 't', 'taken', 'd', '')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return samples
"""

_ANSWER = """
-- KEYS: answer   ARGV: type, data, ttl_ms
redis.call('XADD', KEYS[1], 'MAXLEN', '~', '10000', '*', 't', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class WorkerUnavailable(ModelNotReady):
    """No worker took the request in time, or the one that took it stopped answering."""


def _pcm(samples: np.ndarray) -> bytes:
    """The samples as 16-bit little-endian PCM: as decoded (int16) or from floats in [-1, 1]."""
    if samples.dtype != np.int16:
        samples = np.clip(samples, -1.0, 1.0) * 32767
    return samples.astype("<i2", copy=False).tobytes()


def _samples(pcm: bytes) -> np.ndarray:
    """Samples as asrd's decoder gives them (int16, 16 kHz mono)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def _segment(data: dict) -> Segment:
    words = data.pop("words", None)
    segment = Segment(**data)
    segment.words = [Word(**word) for word in words] if words is not None else None
    return segment


class RemoteSlot:
    """A served model, run by the workers: what the routes ask of a slot (its names, what it
    can do: from the local slot, never loaded) with `transcribe`/`stream` through Redis."""

    accepting = True

    def __init__(self, local: Any, link: RemoteLink):
        self._local, self._link = local, link

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)

    async def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        async with contextlib.aclosing(self.stream(samples, options, streaming=False)) as items:
            async for item in items:
                if isinstance(item, Transcript):
                    return item
        raise WorkerUnavailable("the worker ended the request without a transcript")

    def stream(
        self, samples: np.ndarray, options: TranscribeOptions, *, streaming: bool = True
    ) -> AsyncIterator[Segment | Transcript]:
        return self._link.run(self._local.public_id, samples, options, streaming)


class RemoteModels:
    """The registry the routes see on a SYNC_VIA_WORKERS replica: the local one's names and
    state, slots that run on the workers."""

    def __init__(self, local: ModelRegistry, link: RemoteLink):
        self._local, self._link = local, link

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)

    def get(self, name: str | None) -> RemoteSlot:
        return RemoteSlot(self._local.get(name), self._link)


class RemoteLink:
    """The API replica's side: send a request, relay its answer."""

    def __init__(self, queue: RedisTaskQueue, *, wait_s: float, lease_s: float):
        self.redis, self.prefix = queue.redis, queue.prefix
        self.wait_s, self.lease_s = wait_s, lease_s
        self._cancel_untaken = self.redis.register_script(
            "return redis.call('DEL', KEYS[1])"  # 1: nobody had taken it
        )

    async def run(
        self, model: str, samples: np.ndarray, options: TranscribeOptions, streaming: bool
    ) -> AsyncIterator[Segment | Transcript]:
        job = secrets.token_hex(16)
        samples_key, answer = f"{self.prefix}:sa:{job}", f"{self.prefix}:sr:{job}"
        request = {"id": job, "model": model, "options": json.dumps(asdict(options)),
                   "streaming": int(streaming)}  # fmt: skip
        finished = False
        try:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.set(samples_key, _pcm(samples), px=int((self.wait_s + 60) * 1000))
                    pipe.xadd(f"{self.prefix}:sq", request, maxlen=100_000, approximate=True)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                raise unavailable(exc) from exc
            del samples
            async for item in self._answers(job, samples_key, answer):
                if isinstance(item, Transcript):
                    finished = True
                yield item
        finally:
            if not finished:  # the client went away, or it failed: the worker stops
                with contextlib.suppress(RedisError, OSError):
                    await self.redis.set(f"{self.prefix}:sx:{job}", 1, px=ANSWER_TTL_MS)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(answer, samples_key)

    async def _answers(
        self, job: str, samples_key: str, answer: str
    ) -> AsyncIterator[Segment | Transcript]:
        sent = time.monotonic()
        heard, taken, last = sent, False, "0-0"
        while True:
            try:
                read = await self.redis.xread({answer: last}, count=64, block=READ_BLOCK_MS)
            except (RedisError, OSError) as exc:
                raise unavailable(exc) from exc
            now = time.monotonic()
            for _, messages in read or []:
                for entry, fields in messages:
                    heard, last = now, entry
                    kind, data = fields[b"t"].decode(), fields[b"d"]
                    if kind == "taken":
                        taken = True
                    elif kind == "segment":
                        yield _segment(json.loads(data))
                    elif kind == "done":
                        transcript = transcript_from_dict(json.loads(data))
                        assert transcript is not None
                        yield transcript
                        return
                    elif kind == "error":
                        error = json.loads(data)
                        raise WorkerUnavailable(error["message"], retry_after_s=None)
            if not taken and now - sent > self.wait_s:
                if await self._cancel_untaken(keys=[samples_key]):
                    raise WorkerUnavailable(
                        f"no worker took the request within {self.wait_s:g} s "
                        "(SYNC_WORKER_WAIT_S); all busy or none running"
                    )
            elif taken and now - heard > self.lease_s:
                log.warning("sync request %s: its worker stopped answering", short_id(job))
                raise WorkerUnavailable(
                    "the worker running this request stopped answering; send it again"
                )


class SyncJobRunner:
    """The worker's side: take requests from `P:sq` (up to MAX_SYNC_JOBS at once), run them on
    the model, stream the answer back."""

    def __init__(
        self, queue: RedisTaskQueue, models: ModelRegistry, ready: asyncio.Event | None = None
    ):
        self.redis, self.prefix, self.models = queue.redis, queue.prefix, models
        self.ready = ready  # the start-up load is over: requests may be taken
        self.consumer = queue.consumer
        self.stream = f"{self.prefix}:sq"
        self._take = self.redis.register_script(_TAKE)
        self._answer = self.redis.register_script(_ANSWER)
        self._room = asyncio.Semaphore(MAX_SYNC_JOBS)
        self._jobs: set[asyncio.Task] = set()
        self.stopping = False

    @property
    def running(self) -> int:
        """Sync requests this worker is running now."""
        return len(self._jobs)

    async def run(self) -> None:
        if self.ready is not None:
            await self.ready.wait()
        while not self.stopping:
            await self._room.acquire()
            try:
                entry = await self._read()
            except (RedisError, OSError):
                self._room.release()
                await asyncio.sleep(1)
                continue
            if entry is None:
                self._room.release()
                continue
            job = asyncio.create_task(self._run(entry))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def _read(self) -> dict[str, str] | None:
        try:
            read = await self.redis.xreadgroup(
                GROUP, self.consumer, {self.stream: ">"}, count=1, block=READ_BLOCK_MS
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            with contextlib.suppress(ResponseError):
                await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            return None
        for _, entries in read or []:
            for entry, fields in entries:
                # Never redelivered: a request is taken once (its client retries, not asrd).
                await self.redis.xack(self.stream, GROUP, entry)
                await self.redis.xdel(self.stream, entry)
                return {key.decode(): value.decode() for key, value in fields.items()}
        return None

    async def _run(self, request: dict[str, str]) -> None:
        job = request["id"]
        answer = f"{self.prefix}:sr:{job}"
        try:
            pcm = await self._take(keys=[f"{self.prefix}:sa:{job}", answer], args=[ANSWER_TTL_MS])
            if not pcm:
                return  # its API replica gave up on it already
            work = asyncio.current_task()
            assert work is not None
            watch = asyncio.create_task(self._watch(job, work))
            try:
                await self._transcribe(job, answer, request, _samples(pcm))
            finally:
                watch.cancel()
        except asyncio.CancelledError:  # its client hung up, or this worker is stopping
            log.info("sync request %s: stopped", short_id(job))
            with contextlib.suppress(RedisError, OSError):
                await self._send(answer, "error", {"message": "the worker stopped; send it again"})
        except (RedisError, OSError) as exc:
            log.warning("sync request %s: Redis went away (%s)", short_id(job), exc)
        except Exception:
            log.exception("sync request %s: unexpected error", short_id(job))
            await self._send(answer, "error", {"message": "the transcription failed"})
        finally:
            self._room.release()

    async def _transcribe(
        self, job: str, answer: str, request: dict[str, str], samples: np.ndarray
    ) -> None:
        options = TranscribeOptions(**json.loads(request["options"]))
        try:
            slot = self.models.get(request["model"])
        except ModelNotServed as exc:
            await self._send(answer, "error", {"message": str(exc)})
            return
        log.info("sync request %s: started", short_id(job))
        stream = slot.stream(samples, options, streaming=request.get("streaming") == "1")
        del samples
        try:
            async with contextlib.aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Transcript):
                        await self._send(answer, "done", asdict(item))
                    else:
                        await self._send(answer, "segment", asdict(item))
        except ModelNotReady as exc:
            await self._send(answer, "error", {"message": str(exc)})

    async def _watch(self, job: str, work: asyncio.Task) -> None:
        """Ping the API replica every second; stop the work when its client has gone."""
        answer, cancel = f"{self.prefix}:sr:{job}", f"{self.prefix}:sx:{job}"
        while True:
            await asyncio.sleep(PING_S)
            with contextlib.suppress(RedisError, OSError):
                if await self.redis.exists(cancel):
                    work.cancel()
                    return
                await self._send(answer, "ping", None)

    async def _send(self, answer: str, kind: str, data: object) -> None:
        await self._answer(keys=[answer], args=[kind, json.dumps(data), ANSWER_TTL_MS])

    async def stop(self, grace_s: float) -> None:
        """Take no more requests; those running get `grace_s`, then are cut (their clients
        get an error at once)."""
        self.stopping = True
        if self._jobs:
            await asyncio.wait(list(self._jobs), timeout=max(0.0, grace_s))
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
