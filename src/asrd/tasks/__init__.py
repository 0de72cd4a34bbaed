"""The asynchronous task API's core: tasks, the queue interface and its in-memory
implementation, and the worker that runs tasks one after another."""

from .model import Task, TaskStatus
from .queue import MemoryTaskQueue, QueueFull, TaskQueue
from .worker import TaskWorker

__all__ = ["MemoryTaskQueue", "QueueFull", "Task", "TaskQueue", "TaskStatus", "TaskWorker"]
