"""The in-memory task queue's logic, with a fake clock (no model, no server)."""

from __future__ import annotations

import asyncio

import pytest

from asrd.tasks import MemoryTaskQueue, QueueFull, Task, TaskStatus
from asrd.transcript import Transcript


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_queue(clock: Clock, **overrides: object) -> MemoryTaskQueue:
    options = dict(max_pending=3, max_pending_bytes=100, ttl_s=60, refresh_on_read=True)
    options.update(overrides)
    return MemoryTaskQueue(**options, clock=clock)  # type: ignore[arg-type]


def task(size: int = 10) -> Task:
    return Task(type="transcribe", audio=b"x" * size)


async def finish_next(queue: MemoryTaskQueue) -> Task:
    current = await queue.next()
    await queue.finish(current, Transcript([], "en", 1.0))
    return current


def test_fifo_positions_and_limits() -> None:
    async def scenario() -> None:
        queue = make_queue(Clock())
        a, b, c = task(), task(), task()
        assert [await queue.submit(t) for t in (a, b, c)] == [1, 2, 3]
        with pytest.raises(QueueFull):
            await queue.submit(task())
        assert (await queue.next()) is a
        assert (await queue.get(a.id))[1] == 0
        assert (await queue.get(c.id))[1] == 2
        await queue.submit(task())  # room again
        with pytest.raises(QueueFull, match="too much audio"):
            await make_queue(Clock()).submit(task(size=101))

    asyncio.run(scenario())


def test_next_waits_for_work() -> None:
    async def scenario() -> None:
        queue = make_queue(Clock())
        waiter = asyncio.create_task(queue.next())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        submitted = task()
        await queue.submit(submitted)
        assert (await asyncio.wait_for(waiter, 1)) is submitted
        assert submitted.status is TaskStatus.PROCESSING

    asyncio.run(scenario())


def test_expiry_is_per_task_whatever_the_read_order() -> None:
    # The seed's bug: reading an old task kept newer, expired ones alive.
    async def scenario() -> None:
        clock = Clock()
        queue = make_queue(clock)
        old, new = task(), task()
        await queue.submit(old)
        await queue.submit(new)
        await finish_next(queue)
        clock.now += 10
        await finish_next(queue)
        for _ in range(10):  # read only `old`, every 10 s, for 100 s
            clock.now += 10
            assert await queue.get(old.id) is not None
        assert await queue.get(new.id) is None  # expired 60 s after it finished
        clock.now += 61
        assert await queue.get(old.id) is None

    asyncio.run(scenario())


def test_no_refresh_and_sweep() -> None:
    async def scenario() -> None:
        clock = Clock()
        queue = make_queue(clock, refresh_on_read=False)
        kept = task()
        await queue.submit(kept)
        await finish_next(queue)
        clock.now += 50
        assert await queue.get(kept.id) is not None  # not refreshed by this read
        clock.now += 11
        assert await queue.sweep() == 1
        assert await queue.get(kept.id) is None

    asyncio.run(scenario())


def test_pending_and_processing_tasks_never_expire() -> None:
    async def scenario() -> None:
        clock = Clock()
        queue = make_queue(clock)
        running, waiting = task(), task()
        await queue.submit(running)
        await queue.submit(waiting)
        await queue.next()
        clock.now += 10_000
        assert await queue.sweep() == 0
        assert (await queue.get(waiting.id))[1] == 1

    asyncio.run(scenario())


def test_remove() -> None:
    async def scenario() -> None:
        queue = make_queue(Clock())
        running, waiting = task(), task()
        await queue.submit(running)
        await queue.submit(waiting)
        await queue.next()
        assert (await queue.remove(waiting.id)) is waiting
        assert (await queue.remove(running.id)).cancelled
        assert await queue.get(running.id) is None
        assert (await queue.counts())["pending"] == 0
        assert await queue.remove("nope") is None

    asyncio.run(scenario())


def test_stored_results_are_capped_oldest_first() -> None:
    async def scenario() -> None:
        clock = Clock()
        queue = make_queue(clock, max_pending=10, max_pending_bytes=1000, max_results=2)
        first, second, third, failed, running, waiting = (task() for _ in range(6))
        for submitted in (first, second, third, failed, running, waiting):
            await queue.submit(submitted)
        await finish_next(queue)
        clock.now += 1
        await finish_next(queue)
        assert await queue.get(first.id) is not None  # two results: within the cap
        clock.now += 1
        await finish_next(queue)  # a third: the oldest result goes
        assert await queue.get(first.id) is None
        assert await queue.get(second.id) is not None
        await queue.fail(await queue.next(), "invalid_audio", "no audio")  # failures count too
        assert await queue.get(second.id) is None
        assert (await queue.get(third.id))[0].status is TaskStatus.FINISHED
        assert (await queue.get(failed.id))[0].status is TaskStatus.FAILED
        await queue.next()  # `running` is processing, `waiting` pending: neither is dropped
        assert (await queue.get(running.id))[1] == 0
        assert (await queue.get(waiting.id))[1] == 1
        assert await queue.counts() == {
            "pending": 1, "processing": 1, "finished": 1, "failed": 1
        }  # fmt: skip
        # A result removed or expired frees its place: the next one drops nothing.
        await queue.remove(third.id)
        await queue.finish(running, Transcript([], "en", 1.0))
        assert await queue.get(failed.id) is not None
        assert (await queue.get(running.id))[0].status is TaskStatus.FINISHED

    asyncio.run(scenario())


def test_results_unlimited_by_default() -> None:
    async def scenario() -> None:
        queue = make_queue(Clock(), max_pending=50, max_pending_bytes=10_000)
        tasks = [task() for _ in range(40)]
        for submitted in tasks:
            await queue.submit(submitted)
        for _ in tasks:
            await finish_next(queue)
        assert all([await queue.get(t.id) is not None for t in tasks])

    asyncio.run(scenario())
