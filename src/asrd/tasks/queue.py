"""The task queue: a small interface, and its in-memory implementation (one machine).

The Redis-backed implementation for several machines (`redis_queue.py`) implements the same
`TaskQueue` and passes the same tests (tests/test_task_queue.py).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from ..transcript import Transcript
from .model import Task, TaskStatus


class QueueFull(Exception):
    """No room: too many tasks, or too many bytes, are waiting."""


# A worker not heard from for this long is gone (it announces itself every ANNOUNCE_S).
ANNOUNCE_S = 2.0
WORKER_STALE_S = 10.0


class QueueUnavailable(Exception):
    """The queue's store can't be reached (Redis down): the API answers 503, workers wait."""


@dataclass(frozen=True)
class QueueStats:
    """What an autoscaler needs: tasks waiting (cluster-wide) and the oldest one's age."""

    depth: int
    oldest_age_s: float


class TaskQueue(ABC):
    """FIFO tasks with results that expire `ttl_s` after they are done (or last read).

    `finish` and `fail` return whether this call recorded the outcome: False when the task was
    cancelled meanwhile or (shared queues) another worker took it over; only the recorder sends
    the callback, so a task's callback goes out once."""

    # Several processes share this queue (Redis): a stopping worker leaves the waiting tasks
    # to the others instead of failing them.
    shared: bool = False

    @abstractmethod
    async def submit(self, task: Task) -> int:
        """Queue `task`; return its position (1 = next). Raise `QueueFull` at once if full."""

    @abstractmethod
    async def next(self) -> Task:
        """Wait for the oldest pending task, mark it processing and return it."""

    @abstractmethod
    async def get(self, task_id: str) -> tuple[Task, int | None] | None:
        """The task and its position (None when not pending), or None if unknown/expired."""

    @abstractmethod
    async def finish(self, task: Task, transcript: Transcript) -> bool: ...

    @abstractmethod
    async def fail(self, task: Task, code: str, message: str) -> bool: ...

    @abstractmethod
    async def remove(self, task_id: str) -> Task | None:
        """Cancel a pending task, flag a processing one to stop, or drop a result."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Tasks by status (expired results not counted)."""

    @abstractmethod
    async def sweep(self) -> int:
        """Delete expired results now; return how many."""

    @abstractmethod
    async def stats(self) -> QueueStats: ...

    @abstractmethod
    async def announce(self, name: str, info: dict) -> None:
        """A worker says it is alive and what it does (every few seconds)."""

    @abstractmethod
    async def workers(self) -> list[dict]:
        """The workers heard from within WORKER_STALE_S, by name."""

    async def release(self, task: Task) -> None:
        """Give a taken task back unfinished (this worker is stopping): another takes it."""
        raise NotImplementedError

    async def health(self) -> str | None:
        """Why the queue can't serve now, or None when it can."""
        return None

    async def close(self) -> None:  # noqa: B027 (nothing to release in memory)
        """Release connections and background work."""


class MemoryTaskQueue(TaskQueue):
    """`max_results` (MAX_STORED_RESULTS) caps the finished and failed tasks kept: beyond it
    the oldest result is deleted before it expires, so memory stays bounded however fast
    results arrive. Pending and processing tasks are never dropped (their own limits hold)."""

    def __init__(
        self,
        *,
        max_pending: int,
        max_pending_bytes: int,
        ttl_s: float,
        refresh_on_read: bool,
        max_results: int | None = None,
        clock=time.time,
    ):
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self.ttl_s, self.refresh_on_read, self.clock = ttl_s, refresh_on_read, clock
        self.max_results = max_results
        self._tasks: dict[str, Task] = {}
        self._results: dict[str, None] = {}  # ids of done tasks, oldest result first
        self._pending: deque[str] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Condition()
        self._workers: dict[str, dict] = {}

    async def submit(self, task: Task) -> int:
        if len(self._pending) >= self.max_pending:
            raise QueueFull(f"the queue is full ({self.max_pending} tasks waiting)")
        if self._pending_bytes + task.size > self.max_pending_bytes:
            raise QueueFull("the queue is full (too much audio waiting)")
        self._tasks[task.id] = task
        self._pending.append(task.id)
        self._pending_bytes += task.size
        async with self._wakeup:
            self._wakeup.notify()
        return len(self._pending)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def next(self) -> Task:
        async with self._wakeup:
            await self._wakeup.wait_for(lambda: bool(self._pending))
            task = self._tasks[self._pending.popleft()]
        self._pending_bytes -= task.size
        task.status, task.started_at = TaskStatus.PROCESSING, self.clock()
        return task

    def _expired(self, task: Task) -> bool:
        return task.expires_at is not None and task.expires_at <= self.clock()

    async def get(self, task_id: str) -> tuple[Task, int | None] | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if self._expired(task):
            self._forget(task_id)
            return None
        if task.done and self.refresh_on_read:
            task.expires_at = self.clock() + self.ttl_s
        position = None
        if task.status is TaskStatus.PENDING:
            position = self._pending.index(task_id) + 1
        elif task.status is TaskStatus.PROCESSING:
            position = 0
        return task, position

    def _done(self, task: Task) -> bool:
        task.finished_at = self.clock()
        task.expires_at = task.finished_at + self.ttl_s
        task.audio = None
        if task.id not in self._tasks:
            return False  # removed (cancelled) while it ran: nothing to keep
        self._results[task.id] = None
        if self.max_results is not None:
            while len(self._results) > self.max_results:
                self._forget(next(iter(self._results)))
        return True

    def _forget(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._results.pop(task_id, None)

    async def finish(self, task: Task, transcript: Transcript) -> bool:
        task.status, task.transcript = TaskStatus.FINISHED, transcript
        return self._done(task)

    async def fail(self, task: Task, code: str, message: str) -> bool:
        task.status, task.error = TaskStatus.FAILED, {"code": code, "message": message}
        return self._done(task)

    async def remove(self, task_id: str) -> Task | None:
        found = await self.get(task_id)
        if found is None:
            return None
        task = found[0]
        task.cancelled = True
        if task.status is TaskStatus.PENDING:
            self._pending.remove(task_id)
            self._pending_bytes -= task.size
        self._forget(task_id)
        task.audio = task.transcript = None
        return task

    async def counts(self) -> dict[str, int]:
        await self.sweep()
        counts = {str(status): 0 for status in TaskStatus}
        for task in self._tasks.values():
            counts[str(task.status)] += 1
        return counts

    async def sweep(self) -> int:
        expired = [task_id for task_id, task in self._tasks.items() if self._expired(task)]
        for task_id in expired:
            self._forget(task_id)
        return len(expired)

    async def stats(self) -> QueueStats:
        oldest = self._tasks[self._pending[0]].uploaded_at if self._pending else None
        age = max(0.0, self.clock() - oldest) if oldest is not None else 0.0
        return QueueStats(len(self._pending), age)

    async def announce(self, name: str, info: dict) -> None:
        self._workers[name] = {**info, "worker": name, "seen_at": self.clock()}

    async def workers(self) -> list[dict]:
        now = self.clock()
        live = [w for w in self._workers.values() if now - w["seen_at"] <= WORKER_STALE_S]
        return sorted(live, key=lambda w: w["worker"])
