"""The asynchronous task API's core: tasks, the queue interface and its in-memory
implementation, and the worker that runs tasks one after another. The Redis queue
(`redis_queue.RedisTaskQueue`) is imported only where QUEUE_BACKEND=redis asks for it: `redis`
is an optional dependency (`asrd[redis]`)."""

from .model import Task, TaskStatus
from .queue import MemoryTaskQueue, QueueFull, QueueStats, QueueUnavailable, TaskQueue
from .worker import TaskWorker

__all__ = [
    "MemoryTaskQueue",
    "QueueFull",
    "QueueStats",
    "QueueUnavailable",
    "Task",
    "TaskQueue",
    "TaskStatus",
    "TaskWorker",
]
