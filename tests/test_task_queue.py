"""The task queue's logic, one suite run against both backends: the in-memory queue (with a
fake clock) and the Redis queue on a real `redis-server` (real time, short TTLs). No model,
no HTTP server. The Redis-only part at the end covers what only a shared queue has: several
processes, leases, take-over, and Redis going away."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from asrd.tasks import MemoryTaskQueue, QueueFull, QueueUnavailable, Task, TaskQueue, TaskStatus
from asrd.transcript import Segment, Transcript

from redis_server import RedisServer

TTL_S = 0.6  # the results' lifetime in these tests; the Redis variant really waits


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class Backend:
    """Builds queues and moves time on for one backend."""

    def __init__(self, kind: str, redis: RedisServer | None):
        self.kind, self.redis = kind, redis
        self.now = 1000.0
        self.prefix = f"test-{secrets.token_hex(4)}"  # one namespace per test
        self.queues: list[TaskQueue] = []

    def clock(self) -> float:
        return self.now if self.kind == "memory" else time.time()

    def make(self, *, fresh: bool = False, **overrides: object) -> TaskQueue:
        """A queue on this test's store (`fresh`: on an empty one of its own)."""
        options: dict = dict(max_pending=3, max_pending_bytes=100, ttl_s=TTL_S,
                             refresh_on_read=True)  # fmt: skip
        options.update(overrides)
        if self.kind == "memory":
            queue: TaskQueue = MemoryTaskQueue(**options, clock=self.clock)
        else:
            from asrd.tasks.redis_queue import RedisTaskQueue

            assert self.redis is not None
            options.setdefault("lease_s", 1.0)
            prefix = f"test-{secrets.token_hex(4)}" if fresh else self.prefix
            queue = RedisTaskQueue(self.redis.url, prefix=prefix, **options)
        self.queues.append(queue)
        return queue

    async def advance(self, seconds: float) -> None:
        if self.kind == "memory":
            self.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def close(self) -> None:
        for queue in self.queues:
            await queue.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return Backend(request.param, redis)


def run(backend: Backend, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(), 60)
        finally:
            await backend.close()

    asyncio.run(main())


def task(size: int = 10, **fields: object) -> Task:
    return Task(type="transcribe", audio=b"x" * size, **fields)  # type: ignore[arg-type]


def transcript(text: str = " hello") -> Transcript:
    return Transcript([Segment(0.0, 1.0, text)], "en", 1.0)


async def finish_next(queue: TaskQueue) -> Task:
    current = await queue.next()
    assert await queue.finish(current, transcript())
    return current


# --- the shared suite ------------------------------------------------------------------------


def test_fifo_positions_and_limits(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        a, b, c = task(), task(), task()
        assert [await queue.submit(t) for t in (a, b, c)] == [1, 2, 3]
        with pytest.raises(QueueFull):
            await queue.submit(task())
        assert (await queue.next()).id == a.id
        assert (await queue.get(a.id))[1] == 0
        assert (await queue.get(c.id))[1] == 2
        await queue.submit(task())  # room again
        with pytest.raises(QueueFull, match="too much audio"):
            await backend.make(fresh=True).submit(task(size=101))

    run(backend, scenario)


def test_next_waits_for_work(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        waiter = asyncio.create_task(queue.next())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        submitted = task()
        await queue.submit(submitted)
        taken = await asyncio.wait_for(waiter, 5)
        assert taken.id == submitted.id and taken.audio == submitted.audio
        assert taken.status is TaskStatus.PROCESSING and taken.started_at is not None

    run(backend, scenario)


def test_the_record_round_trips(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        submitted = task(language="en", file_name="talk.wav", callback_url="http://x/cb",
                         target_model="tiny.en", uploaded_at=backend.clock())  # fmt: skip
        await queue.submit(submitted)
        taken = await queue.next()
        assert (taken.file_name, taken.callback_url, taken.target_model, taken.language) == (
            "talk.wav", "http://x/cb", "tiny.en", "en"
        )  # fmt: skip
        taken.warnings, taken.used_model, taken.used_device = ["a gap"], "tiny.en", "cpu"
        assert await queue.finish(taken, transcript(" one two"))
        done, position = await queue.get(submitted.id)
        assert position is None and done.status is TaskStatus.FINISHED
        assert done.transcript.text == "one two" and done.warnings == ["a gap"]
        assert (done.used_model, done.used_device) == ("tiny.en", "cpu")
        assert done.to_json(None)["result"]["segments"][0]["text"] == "one two"
        assert done.uploaded_at <= done.started_at <= done.finished_at < done.expires_at

    run(backend, scenario)


def test_expiry_is_per_task_whatever_the_read_order(backend: Backend) -> None:
    # The seed's bug: reading an old task kept newer, expired ones alive.
    async def scenario() -> None:
        queue = backend.make()
        old, new = task(), task()
        await queue.submit(old)
        await queue.submit(new)
        await finish_next(queue)
        await backend.advance(TTL_S / 6)
        await finish_next(queue)
        for _ in range(10):  # read only `old`, every TTL/6, for 10/6 TTL
            await backend.advance(TTL_S / 6)
            assert await queue.get(old.id) is not None
        assert await queue.get(new.id) is None  # expired a TTL after it finished
        await backend.advance(TTL_S * 1.2)
        assert await queue.get(old.id) is None

    run(backend, scenario)


def test_no_refresh_and_sweep(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make(refresh_on_read=False)
        kept = task()
        await queue.submit(kept)
        await finish_next(queue)
        await backend.advance(TTL_S * 0.6)
        assert await queue.get(kept.id) is not None  # not refreshed by this read
        await backend.advance(TTL_S * 0.6)
        assert await queue.sweep() == 1
        assert await queue.get(kept.id) is None
        assert await queue.counts() == {"pending": 0, "processing": 0, "finished": 0, "failed": 0}

    run(backend, scenario)


def test_pending_and_processing_tasks_never_expire(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        running, waiting = task(), task()
        await queue.submit(running)
        await queue.submit(waiting)
        await queue.next()
        await backend.advance(TTL_S * 2)
        assert await queue.sweep() == 0
        assert (await queue.get(waiting.id))[1] == 1
        assert (await queue.get(running.id))[1] == 0

    run(backend, scenario)


def test_remove(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        running, waiting = task(), task()
        await queue.submit(running)
        await queue.submit(waiting)
        taken = await queue.next()
        assert (await queue.remove(waiting.id)).id == waiting.id
        assert (await queue.remove(running.id)).cancelled
        assert await queue.get(running.id) is None
        assert (await queue.counts())["pending"] == 0
        assert await queue.remove("nope") is None
        # The worker's outcome for a cancelled task is not recorded (no result, no callback).
        for _ in range(40):  # the Redis worker learns it from its heartbeat
            if taken.cancelled:
                break
            await asyncio.sleep(0.05)
        assert taken.cancelled
        assert not await queue.finish(taken, transcript())
        assert await queue.get(running.id) is None
        # The removed task's room is free again: three fit.
        for _ in range(3):
            await queue.submit(task(size=30))

    run(backend, scenario)


def test_stored_results_are_capped_oldest_first(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make(max_pending=10, max_pending_bytes=1000, max_results=2, ttl_s=60)
        first, second, third, failed, running, waiting = (task() for _ in range(6))
        for submitted in (first, second, third, failed, running, waiting):
            await queue.submit(submitted)
        await finish_next(queue)
        await backend.advance(0.01)
        await finish_next(queue)
        assert await queue.get(first.id) is not None  # two results: within the cap
        await backend.advance(0.01)
        await finish_next(queue)  # a third: the oldest result goes
        assert await queue.get(first.id) is None
        assert await queue.get(second.id) is not None
        await backend.advance(0.01)
        assert await queue.fail(await queue.next(), "invalid_audio", "no audio")  # counts too
        assert await queue.get(second.id) is None
        assert (await queue.get(third.id))[0].status is TaskStatus.FINISHED
        found = (await queue.get(failed.id))[0]
        assert found.status is TaskStatus.FAILED and found.error["code"] == "invalid_audio"
        taken = await queue.next()  # `running` is processing, `waiting` pending: not dropped
        assert (await queue.get(running.id))[1] == 0
        assert (await queue.get(waiting.id))[1] == 1
        assert await queue.counts() == {
            "pending": 1, "processing": 1, "finished": 1, "failed": 1
        }  # fmt: skip
        # A result removed or expired frees its place: the next one drops nothing.
        await queue.remove(third.id)
        await queue.finish(taken, transcript())
        assert await queue.get(failed.id) is not None
        assert (await queue.get(running.id))[0].status is TaskStatus.FINISHED

    run(backend, scenario)


def test_results_unlimited_by_default(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make(max_pending=50, max_pending_bytes=10_000, ttl_s=60)
        tasks = [task() for _ in range(40)]
        for submitted in tasks:
            await queue.submit(submitted)
        for _ in tasks:
            await finish_next(queue)
        assert all([await queue.get(t.id) is not None for t in tasks])

    run(backend, scenario)


def test_stats(backend: Backend) -> None:
    async def scenario() -> None:
        queue = backend.make()
        assert (await queue.stats()).depth == 0
        first = task(uploaded_at=backend.clock() - 5)
        await queue.submit(first)
        await queue.submit(task())
        stats = await queue.stats()
        assert stats.depth == 2 and 4.5 < stats.oldest_age_s < 30
        await queue.next()
        stats = await queue.stats()
        assert stats.depth == 1 and stats.oldest_age_s < 4.5

    run(backend, scenario)


# --- Redis only: several processes, leases, Redis away ---------------------------------------


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> Backend:
    return Backend("redis", redis_server)


def test_replicas_share_queue_bounds_and_fifo(redis_backend: Backend) -> None:
    async def scenario() -> None:
        api_a, api_b = redis_backend.make(), redis_backend.make()
        worker = redis_backend.make()
        tasks = [task(), task(), task()]
        await api_a.submit(tasks[0])
        await api_b.submit(tasks[1])
        assert await api_a.submit(tasks[2]) == 3
        with pytest.raises(QueueFull):  # the bound is the cluster's, not a replica's
            await api_b.submit(task())
        assert (await api_b.get(tasks[0].id))[1] == 1
        assert [(await worker.next()).id for _ in tasks] == [t.id for t in tasks]
        assert (await api_a.counts())["processing"] == 3

    run(redis_backend, scenario)


def test_a_dead_workers_task_is_taken_over_and_recorded_once(redis_backend: Backend) -> None:
    async def scenario() -> None:
        api = redis_backend.make()
        dead, alive = redis_backend.make(lease_s=0.5), redis_backend.make(lease_s=0.5)
        submitted = task(callback_url="http://x/cb")
        await api.submit(submitted)
        first = await dead.next()
        for lease in dead._leases.values():  # type: ignore[attr-defined]
            lease.heartbeat.cancel()  # the process froze: no more heartbeats
        taken = await asyncio.wait_for(alive.next(), 10)
        assert taken.id == first.id and taken.audio == submitted.audio  # audio kept for it
        assert await alive.finish(taken, transcript())
        # The frozen worker wakes up and finishes too: not recorded, so no second callback.
        assert not await dead.finish(first, transcript(" other"))
        assert (await api.get(submitted.id))[0].transcript.text == "hello"
        assert redis_backend.redis.keys(f"{redis_backend.prefix}:a:*") == []

    run(redis_backend, scenario)


def test_a_live_workers_lease_is_renewed(redis_backend: Backend) -> None:
    async def scenario() -> None:
        api = redis_backend.make()
        busy, idle = redis_backend.make(lease_s=0.4), redis_backend.make(lease_s=0.4)
        await api.submit(task())
        taken = await busy.next()
        other = asyncio.create_task(idle.next())
        await asyncio.sleep(1.5)  # several leases long: the heartbeat keeps it
        assert not other.done() and not taken.cancelled
        assert await busy.finish(taken, transcript())
        other.cancel()

    run(redis_backend, scenario)


def test_a_stopping_worker_releases_its_task(redis_backend: Backend) -> None:
    async def scenario() -> None:
        api = redis_backend.make()
        stopping, other = redis_backend.make(lease_s=30), redis_backend.make(lease_s=30)
        await api.submit(task())
        taken = await stopping.next()
        await stopping.release(taken)
        again = await asyncio.wait_for(other.next(), 5)  # at once, not after 30 s
        assert again.id == taken.id

    run(redis_backend, scenario)


def test_redis_away_then_back_after_a_restart(
    redis_backend: Backend, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        queue = redis_backend.make()
        kept = [task(), task()]
        for submitted in kept:
            await queue.submit(submitted)
        redis_server.stop()
        with pytest.raises(QueueUnavailable):
            await queue.submit(task())
        with pytest.raises(QueueUnavailable):
            await queue.get(kept[0].id)
        assert "unreachable" in (await queue.health() or "")
        waiter = asyncio.create_task(queue.next())  # a worker waits it out
        await asyncio.sleep(0.5)
        redis_server.start()  # the append-only file brings the accepted tasks back
        assert await queue.health() is None
        assert (await asyncio.wait_for(waiter, 10)).id == kept[0].id
        assert (await queue.get(kept[1].id))[1] == 1

    run(redis_backend, scenario)


def test_a_full_redis_refuses_with_a_clear_error(
    redis_backend: Backend, redis_server: RedisServer
) -> None:
    import redis

    async def scenario() -> None:
        queue = redis_backend.make(max_pending_bytes=10**8)
        with redis.Redis.from_url(redis_server.url) as admin:
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used + 512 * 1024)
            try:
                with pytest.raises(QueueUnavailable, match="out of memory"):
                    await queue.submit(task(size=4 * 1024 * 1024))
            finally:
                admin.config_set("maxmemory", 0)
        assert await queue.submit(task()) == 1  # nothing half-written by the refusal

    run(redis_backend, scenario)


def test_tls_and_a_password_in_the_url(tmp_path: Path) -> None:
    from asrd.tasks.redis_queue import RedisTaskQueue

    server = RedisServer(tmp_path, tls=True, password="s3cret-pw").start()
    options = dict(prefix="tls", max_pending=3, max_pending_bytes=100, ttl_s=60,
                   refresh_on_read=True)  # fmt: skip

    async def scenario() -> None:
        queue = RedisTaskQueue(server.url, **options)  # type: ignore[arg-type]
        submitted = task()
        assert await queue.submit(submitted) == 1
        assert (await queue.next()).audio == submitted.audio
        await queue.close()
        wrong = RedisTaskQueue(server.url.replace("s3cret-pw", "guess"), **options)  # type: ignore[arg-type]
        with pytest.raises(QueueUnavailable, match="credentials") as refused:
            await wrong.get(submitted.id)
        assert "s3cret" not in str(refused.value) and "guess" not in str(refused.value)
        assert "credentials" in (await wrong.health() or "")
        await wrong.close()
        without_tls = server.url.replace("rediss://", "redis://").split("?")[0]
        plain = RedisTaskQueue(without_tls, **options)  # type: ignore[arg-type]
        with pytest.raises(QueueUnavailable):  # no TLS: no answer
            await plain.get(submitted.id)
        await plain.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        server.stop()


def test_long_gone_workers_are_forgotten(redis_backend: Backend) -> None:
    async def scenario() -> None:
        api = redis_backend.make()
        gone, alive = redis_backend.make(), redis_backend.make()
        names = gone.consumer, alive.consumer  # type: ignore[attr-defined]
        await api.submit(task())
        await gone.finish(await gone.next(), transcript())  # `gone` joined the group
        await gone.announce(names[0], {"busy": False})
        await alive.announce(names[1], {"busy": True})
        assert sorted(w["worker"] for w in await api.workers()) == sorted(names)
        later = lambda: time.time() + 3600  # noqa: E731  (an hour later)
        api.clock = alive.clock = later  # type: ignore[attr-defined]
        await alive.announce(names[1], {"busy": True})
        assert [w["worker"] for w in await api.workers()] == [names[1]]
        api_redis = api.redis  # type: ignore[attr-defined]
        consumers = await api_redis.xinfo_consumers(f"{redis_backend.prefix}:q", "workers")
        assert names[0].encode() not in [c["name"] for c in consumers]

    run(redis_backend, scenario)


def test_a_retried_call_changes_nothing(redis_backend: Backend) -> None:
    """redis-py retries a call on a fresh connection when the old one died, which can run a
    script twice (its write landed, its reply was lost): each must come out the same."""
    from asrd.tasks.redis_queue import _Lease

    async def scenario() -> None:
        queue = redis_backend.make(max_pending_bytes=20)
        submitted = task()
        assert await queue.submit(submitted) == 1
        assert await queue.submit(submitted) == 1  # the same task again: no second entry
        await queue.submit(task())  # 20 bytes waiting: its size was counted once
        taken = await queue.next()
        token = queue._leases[taken.id].token  # type: ignore[attr-defined]
        assert await queue.finish(taken, transcript())
        queue._leases[taken.id] = _Lease(token)  # type: ignore[attr-defined]
        assert await queue.finish(taken, transcript())  # recorded, once: still True
        assert await queue.counts() == {
            "pending": 1, "processing": 0, "finished": 1, "failed": 0
        }  # fmt: skip

    run(redis_backend, scenario)


def test_a_worker_takes_nothing_before_its_model_is_loaded() -> None:
    """A worker that has just started (its start-up load running) leaves the tasks to the
    workers that can run them, instead of failing them with `model_not_ready`."""
    from asrd.tasks import TaskWorker

    async def scenario() -> None:
        queue = MemoryTaskQueue(max_pending=3, max_pending_bytes=100, ttl_s=60,
                                refresh_on_read=True)  # fmt: skip
        waiting = task()
        await queue.submit(waiting)
        worker = TaskWorker(queue, None, None, None)  # type: ignore[arg-type]
        runner = asyncio.create_task(worker.run())
        await asyncio.sleep(0.2)
        assert (await queue.get(waiting.id))[1] == 1  # still waiting, not taken
        worker.stop()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
