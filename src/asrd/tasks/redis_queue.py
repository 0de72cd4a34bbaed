"""The task queue on Redis, shared by any number of API replicas and workers.

Why Redis Streams with a consumer group, driven directly: XREADGROUP hands each task to one
worker in the order submitted (FIFO across the cluster), the group's pending list remembers
who took what, and XAUTOCLAIM lets a live worker pick up what a dead one held. Job libraries
(arq, rq, celery, taskiq) give delivery but not cluster-wide bounds checked at submission,
cancellation of a running task, or exactly-once results without fighting them.

Keys, under REDIS_PREFIX (`P`):
- `P:t:<id>` the task's record (hash; see records.py), kept until done, then EXPIRE'd at the
  result's TTL (refreshed on read where REFRESH_EXPIRATION_TIME_ON_USAGE says so);
- `P:a:<id>` its audio, deleted when the task is finished, failed or cancelled; kept while a
  worker runs it, so another can take over if that worker dies;
- `P:l:<id>` the lease of the worker running it (a token, expiring after TASK_LEASE_S unless
  renewed by its heartbeat);
- `P:q` the stream of task ids (group `workers`); `P:waiting` the pending ids by submission
  order (positions), `P:waiting_bytes` their audio's size (MAX_QUEUE_MB); `P:running` the ids
  being run; `P:results` the done ids by completion time (MAX_STORED_RESULTS), `P:failed`
  those that failed; `P:seq` the submission counter.

Every check-and-act is one Lua script: the bounds at submission (429 cluster-wide), taking a
task (only if nobody holds a live lease), recording its outcome (only by the holder of the
current lease: one result, one callback), cancelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..logs import short_id
from ..transcript import Transcript
from .model import Task, TaskStatus
from .queue import WORKER_STALE_S, QueueFull, QueueStats, QueueUnavailable, TaskQueue
from .records import result_field, submitted_fields, task_from_fields
from .worker import worker_name

log = logging.getLogger(__name__)

GROUP = "workers"
READ_BLOCK_MS = 1000
RETRY_S = 1.0
# How long a worker keeps trying to record a finished task while Redis is away. Past it the
# lease has long lapsed: another worker runs the task again and records it.
RECORD_RETRY_S = 120.0
T = TypeVar("T")

_SUBMIT = """
-- KEYS: task, audio, waiting, waiting_bytes, stream, seq
-- ARGV: id, data, uploaded_at, size, max_pending, max_bytes, audio
if redis.call('EXISTS', KEYS[1]) == 1 then  -- run twice (a retried call): queued already
  local rank = redis.call('ZRANK', KEYS[3], ARGV[1])
  return rank and rank + 1 or 0
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return -1 end
local bytes = tonumber(redis.call('GET', KEYS[4]) or '0')
if bytes + tonumber(ARGV[4]) > tonumber(ARGV[6]) then return -2 end
local seq = redis.call('INCR', KEYS[6])
local entry = redis.call('XADD', KEYS[5], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'pending', 'data', ARGV[2], 'uploaded_at', ARGV[3],
           'size', ARGV[4], 'entry', entry)
redis.call('SET', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('INCRBY', KEYS[4], ARGV[4])
return redis.call('ZCARD', KEYS[3])
"""

_TAKE = """
-- KEYS: task, audio, lease, waiting, waiting_bytes, running, stream
-- ARGV: id, token, lease_ms, started_at, group, entry
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'processing' and redis.call('HGET', KEYS[1], 'holder') == ARGV[2] then
  return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]) or false, 'pending'}
end  -- run twice (a retried call): taken already, by this very call
if status == 'processing' and redis.call('EXISTS', KEYS[3]) == 1 then
  return false  -- its worker is alive
end
if status ~= 'pending' and status ~= 'processing' then  -- cancelled, or already done
  redis.call('XACK', KEYS[7], ARGV[5], ARGV[6])
  redis.call('XDEL', KEYS[7], ARGV[6])
  return false
end
if status == 'pending' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('DECRBY', KEYS[5], redis.call('HGET', KEYS[1], 'size'))
  redis.call('SADD', KEYS[6], ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', 'processing', 'holder', ARGV[2], 'started_at', ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
return {fields, redis.call('GET', KEYS[2]) or false, status}
"""

_HEARTBEAT = """
-- KEYS: task, lease   ARGV: token, lease_ms
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

_DONE = """
-- KEYS: task, audio, lease, running, results, failed, stream
-- ARGV: id, token, status, result, finished_at, expires_at, ttl_ms, max_results, prefix,
--       group
local task = redis.call('HMGET', KEYS[1], 'holder', 'entry', 'recorded_by')
if task[3] == ARGV[2] then return 1 end  -- run twice (a retried call): recorded already
if task[1] ~= ARGV[2] then return 0 end  -- cancelled, or taken over by another worker
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4], 'finished_at', ARGV[5],
           'expires_at', ARGV[6], 'recorded_by', ARGV[2])
redis.call('HDEL', KEYS[1], 'holder')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('XACK', KEYS[7], ARGV[10], task[2])
redis.call('XDEL', KEYS[7], task[2])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if ARGV[3] == 'failed' then redis.call('SADD', KEYS[6], ARGV[1]) end
while redis.call('ZCARD', KEYS[5]) > tonumber(ARGV[8]) do
  local oldest = redis.call('ZPOPMIN', KEYS[5])[1]
  redis.call('DEL', ARGV[9] .. ':t:' .. oldest)
  redis.call('SREM', KEYS[6], oldest)
end
return 1
"""

_RELEASE = """
-- KEYS: task, lease, stream   ARGV: token, group, consumer, idle_ms
local task = redis.call('HMGET', KEYS[1], 'holder', 'entry')
if task[1] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
-- Idle at once, so the next XAUTOCLAIM hands it to another worker without waiting.
redis.call('XCLAIM', KEYS[3], ARGV[2], ARGV[3], 0, task[2], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""

_GET = """
-- KEYS: task, waiting   ARGV: id, refresh, expires_at, ttl_ms
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return false end
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[2] == '1' and (status == 'finished' or status == 'failed') then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  fields = redis.call('HGETALL', KEYS[1])
end
local rank = false
if status == 'pending' then rank = redis.call('ZRANK', KEYS[2], ARGV[1]) end
return {fields, rank}
"""

_REMOVE = """
-- KEYS: task, audio, lease, waiting, waiting_bytes, running, results, failed, stream
-- ARGV: id, group
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return false end
local task = redis.call('HMGET', KEYS[1], 'status', 'size', 'entry')
if task[1] == 'pending' or task[1] == 'processing' then
  redis.call('XACK', KEYS[9], ARGV[2], task[3])
  redis.call('XDEL', KEYS[9], task[3])
end
if task[1] == 'pending' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('DECRBY', KEYS[5], task[2])
end
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('SREM', KEYS[8], ARGV[1])
-- The running worker's heartbeat finds its task gone and stops.
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return fields
"""

_SWEEP = """
-- KEYS: results, failed   ARGV: prefix
local removed = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. ':t:' .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('SREM', KEYS[2], id)
    removed = removed + 1
  end
end
return removed
"""

_STATS = """
-- KEYS: waiting   ARGV: prefix
local depth = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
local uploaded = false
if oldest then uploaded = redis.call('HGET', ARGV[1] .. ':t:' .. oldest, 'uploaded_at') end
return {depth, uploaded}
"""


def unavailable(exc: BaseException) -> QueueUnavailable:
    """The error for a Redis that can't be reached. The message names the kind of failure,
    not Redis's address (`/hc` is public); the log has the details."""
    log.debug("Redis: %s", exc)
    kind = "timed out" if isinstance(exc, TimeoutError | RedisTimeoutError) else "unreachable"
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        kind = "refusing asrd's credentials"
    elif isinstance(exc, OutOfMemoryError):
        kind = "out of memory (maxmemory)"
    elif isinstance(exc, BusyLoadingError):
        kind = "loading its data"
    elif isinstance(exc, ReadOnlyError):
        kind = "read-only (a replica)"
    return QueueUnavailable(f"the task queue (Redis) is {kind} ({type(exc).__name__})")


def _fields(flat: list[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


@dataclass
class _Lease:
    token: str
    heartbeat: asyncio.Task | None = field(default=None)


class RedisTaskQueue(TaskQueue):
    """`TaskQueue` on Redis. `lease_s` (TASK_LEASE_S) is how long a worker that stops
    renewing its lease (dead, frozen, cut off) keeps its task before another takes it over."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        max_pending: int,
        max_pending_bytes: int,
        ttl_s: float,
        refresh_on_read: bool,
        max_results: int | None = None,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        consumer: str | None = None,
    ):
        self.redis = aioredis.Redis.from_url(
            url,
            socket_timeout=5 + READ_BLOCK_MS / 1000,  # longer than a blocking read
            socket_connect_timeout=2,
            health_check_interval=15,
            # A pooled connection found dead (Redis restarted) is retried on a fresh one, so
            # the first request after a restart succeeds. A retry can run a script twice (the
            # reply, not the write, was lost): every script here is safe to run twice.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self.prefix = prefix
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self.ttl_s, self.refresh_on_read, self.clock = ttl_s, refresh_on_read, clock
        self.max_results = max_results if max_results is not None else 2**31
        self.lease_ms = int(lease_s * 1000)
        self.consumer = consumer or worker_name()
        self.stream = f"{prefix}:q"
        self._leases: dict[str, _Lease] = {}
        self._group_ready = False
        self._last_autoclaim = 0.0
        self._warned = False
        script = self.redis.register_script
        self._submit, self._take, self._heartbeat = (
            script(_SUBMIT), script(_TAKE), script(_HEARTBEAT)
        )  # fmt: skip
        self._done, self._release, self._get = script(_DONE), script(_RELEASE), script(_GET)
        self._remove, self._sweep, self._stats = (
            script(_REMOVE), script(_SWEEP), script(_STATS)
        )  # fmt: skip

    # --- keys --------------------------------------------------------------------------------

    def _key(self, kind: str, task_id: str | None = None) -> str:
        return f"{self.prefix}:{kind}" if task_id is None else f"{self.prefix}:{kind}:{task_id}"

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation. A Redis that can't serve (unreachable, loading its data,
        out of memory, a read-only replica, credentials refused) is `QueueUnavailable`; a
        refused script is a bug, raised as it is."""
        try:
            return await operation()
        except (RedisError, OSError) as exc:
            serving = isinstance(exc, ResponseError) and not isinstance(
                exc, OutOfMemoryError | ReadOnlyError | NoPermissionError
            )
            if serving and "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            raise unavailable(exc) from exc

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- the API's side ----------------------------------------------------------------------

    async def submit(self, task: Task) -> int:
        fields = submitted_fields(task)
        keys = [self._key("t", task.id), self._key("a", task.id), self._key("waiting"),
                self._key("waiting_bytes"), self.stream, self._key("seq")]  # fmt: skip
        args = [task.id, fields["data"], fields["uploaded_at"], task.size, self.max_pending,
                self.max_pending_bytes, task.audio or b""]  # fmt: skip

        async def run() -> int:
            await self._ensure_group()
            return int(await self._submit(keys=keys, args=args))

        position = await self._call(run)
        if position == -1:
            raise QueueFull(f"the queue is full ({self.max_pending} tasks waiting)")
        if position == -2:
            raise QueueFull("the queue is full (too much audio waiting)")
        return position

    async def get(self, task_id: str) -> tuple[Task, int | None] | None:
        keys = [self._key("t", task_id), self._key("waiting")]
        expires_at = repr(self.clock() + self.ttl_s)
        args = [task_id, int(self.refresh_on_read), expires_at, self._ttl_ms()]
        found = await self._call(lambda: self._get(keys=keys, args=args))
        if not found:
            return None
        flat, rank = found
        task = task_from_fields(task_id, _fields(flat))
        if task.status is TaskStatus.PENDING:
            position = int(rank) + 1 if rank is not None else None
        else:
            position = 0 if task.status is TaskStatus.PROCESSING else None
        return task, position

    async def remove(self, task_id: str) -> Task | None:
        keys = [self._key("t", task_id), self._key("a", task_id), self._key("l", task_id),
                self._key("waiting"), self._key("waiting_bytes"), self._key("running"),
                self._key("results"), self._key("failed"), self.stream]  # fmt: skip
        flat = await self._call(lambda: self._remove(keys=keys, args=[task_id, GROUP]))
        if not flat:
            return None
        task = task_from_fields(task_id, _fields(flat))
        task.cancelled, task.transcript = True, None
        return task

    async def counts(self) -> dict[str, int]:
        await self.sweep()

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self._key("waiting")).scard(self._key("running"))
                pipe.zcard(self._key("results")).scard(self._key("failed"))
                return await pipe.execute()

        pending, running, results, failed = await self._call(read)
        return {"pending": pending, "processing": running, "finished": results - failed,
                "failed": failed}  # fmt: skip

    async def sweep(self) -> int:
        keys = [self._key("results"), self._key("failed")]
        return int(await self._call(lambda: self._sweep(keys=keys, args=[self.prefix])))

    async def stats(self) -> QueueStats:
        depth, uploaded = await self._call(
            lambda: self._stats(keys=[self._key("waiting")], args=[self.prefix])
        )
        age = max(0.0, self.clock() - float(uploaded)) if uploaded else 0.0
        return QueueStats(int(depth), age)

    async def announce(self, name: str, info: dict) -> None:
        record = json.dumps({**info, "worker": name, "seen_at": self.clock()})
        await self._call(lambda: self.redis.hset(self._key("workers"), name, record))

    async def workers(self) -> list[dict]:
        found = await self._call(lambda: self.redis.hgetall(self._key("workers")))
        now, live, forgotten = self.clock(), [], []
        for name, record in found.items():
            info = json.loads(record)
            if now - info["seen_at"] <= WORKER_STALE_S:
                live.append(info)
            elif now - info["seen_at"] > 6 * WORKER_STALE_S:  # long gone: tidy up
                forgotten.append(name)
        if forgotten:
            await self._call(lambda: self.redis.hdel(self._key("workers"), *forgotten))
            await self._call(lambda: self._forget_consumers({n.decode() for n in forgotten}))
        return sorted(live, key=lambda w: w["worker"])

    async def _forget_consumers(self, names: set[str]) -> None:
        """Drop long-gone workers from the consumer group, once nothing is pending on them
        (what they held is taken over first)."""
        for stream in (self.stream, f"{self.prefix}:sq"):
            with contextlib.suppress(ResponseError):  # no such stream or group yet
                for consumer in await self.redis.xinfo_consumers(stream, GROUP):
                    name = consumer["name"]
                    name = name.decode() if isinstance(name, bytes) else name
                    if name in names and consumer["pending"] == 0:
                        await self.redis.xgroup_delconsumer(stream, GROUP, name)

    async def health(self) -> str | None:
        try:
            await asyncio.wait_for(self.redis.ping(), 2)
        except (RedisError, OSError, TimeoutError) as exc:
            return str(unavailable(exc))
        return None

    async def close(self) -> None:
        for lease in self._leases.values():
            if lease.heartbeat:
                lease.heartbeat.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    # --- the worker's side -------------------------------------------------------------------

    async def next(self) -> Task:
        """The oldest task nobody runs: one whose worker's lease ran out (checked every half
        lease), else the next in the stream. Waits (and retries while Redis is away)."""
        while True:
            try:
                task = await self._call(self._next_once)
            except QueueUnavailable as exc:
                if not self._warned:
                    log.warning("%s (%s); retrying every %g s", exc, exc.__cause__, RETRY_S)
                    self._warned = True
                await asyncio.sleep(RETRY_S)
                continue
            except RedisError:  # a script refused (a bug, or a Redis without Lua): keep going
                log.exception("taking a task failed")
                await asyncio.sleep(RETRY_S)
                continue
            if self._warned:
                log.info("the task queue (Redis) is reachable again")
                self._warned = False
            if task is not None:
                return task

    async def _next_once(self) -> Task | None:
        await self._ensure_group()
        now = time.monotonic()
        if now - self._last_autoclaim >= self.lease_ms / 2000:
            self._last_autoclaim = now
            ids = await self.redis.xautoclaim(  # justid: the ids alone
                self.stream, GROUP, self.consumer, self.lease_ms, "0-0", count=16, justid=True
            )
            for entry in ids:
                task = await self._take_entry(entry)
                if task is not None:
                    return task
        read = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=1, block=READ_BLOCK_MS
        )
        for _, entries in read or []:
            for entry, values in entries:
                task = await self._take_entry(entry, values.get(b"id"))
                if task is not None:
                    return task
        return None

    async def _take_entry(self, entry: bytes, task_id: bytes | None = None) -> Task | None:
        if task_id is None:  # claimed by id only: read the entry for its task id
            found = await self.redis.xrange(self.stream, entry, entry)
            if not found:  # deleted (cancelled, done) after it was delivered
                await self.redis.xack(self.stream, GROUP, entry)
                return None
            task_id = found[0][1][b"id"]
        tid = task_id.decode()
        token = f"{self.consumer}:{secrets.token_hex(8)}"
        keys = [self._key("t", tid), self._key("a", tid), self._key("l", tid),
                self._key("waiting"), self._key("waiting_bytes"), self._key("running"),
                self.stream]  # fmt: skip
        args = [tid, token, self.lease_ms, repr(self.clock()), GROUP, entry]
        taken = await self._take(keys=keys, args=args)
        if not taken:
            return None
        flat, audio, previous = taken
        task = task_from_fields(tid, _fields(flat))
        task.audio = audio or None
        if previous == b"processing":
            log.info("task %s: taken over from a worker whose lease ran out", short_id(tid))
        lease = _Lease(token)
        lease.heartbeat = asyncio.create_task(self._keep_lease(task, token))
        self._leases[tid] = lease
        return task

    async def _keep_lease(self, task: Task, token: str) -> None:
        """Renew the lease while the task runs; flag the task cancelled when its record is
        gone (DELETE on any replica) or another worker holds it now. Checked every second at
        most, so a cancellation stops the work within about a second."""
        keys = [self._key("t", task.id), self._key("l", task.id)]
        every = min(1.0, self.lease_ms / 3000)
        while True:
            await asyncio.sleep(every)
            try:
                held = await self._heartbeat(keys=keys, args=[token, self.lease_ms])
            except (RedisError, OSError):
                continue  # Redis away: keep working; the result waits for it
            if not held:
                self._leases.pop(task.id, None)
                task.cancelled = True
                log.info("task %s: cancelled (or taken over) elsewhere", short_id(task.id))
                return

    def _end_lease(self, task: Task) -> _Lease | None:
        lease = self._leases.pop(task.id, None)
        if lease is not None and lease.heartbeat is not None:
            lease.heartbeat.cancel()
        return lease

    async def finish(self, task: Task, transcript: Transcript) -> bool:
        task.status, task.transcript = TaskStatus.FINISHED, transcript
        return await self._record(task)

    async def fail(self, task: Task, code: str, message: str) -> bool:
        task.status, task.error = TaskStatus.FAILED, {"code": code, "message": message}
        return await self._record(task)

    async def _record(self, task: Task) -> bool:
        task.audio = None
        task.finished_at = self.clock()
        task.expires_at = task.finished_at + self.ttl_s
        lease = self._end_lease(task)
        if lease is None:
            return False
        keys = [self._key("t", task.id), self._key("a", task.id), self._key("l", task.id),
                self._key("running"), self._key("results"), self._key("failed"),
                self.stream]  # fmt: skip
        args = [task.id, lease.token, str(task.status), result_field(task),
                repr(task.finished_at), repr(task.expires_at), self._ttl_ms(), self.max_results,
                self.prefix, GROUP]  # fmt: skip
        deadline = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                recorded = bool(await self._done(keys=keys, args=args))
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    log.warning("task %s: outcome not recorded (Redis away: %s); another "
                                "worker will run it again", short_id(task.id), exc)  # fmt: skip
                    return False
                await asyncio.sleep(RETRY_S)
        if not recorded:
            task.cancelled = True  # cancelled, or another worker took it over
        return recorded

    async def release(self, task: Task) -> None:
        lease = self._end_lease(task)
        if lease is None:
            return
        keys = [self._key("t", task.id), self._key("l", task.id), self.stream]
        args = [lease.token, GROUP, self.consumer, self.lease_ms + 1]
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=keys, args=args)
