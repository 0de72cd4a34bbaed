"""The task queue QUEUE_BACKEND names."""

from __future__ import annotations

from ..config import Settings
from .queue import MemoryTaskQueue, TaskQueue


def create_queue(settings: Settings) -> TaskQueue:
    options = dict(
        max_pending=settings.max_task_queue_size,
        max_pending_bytes=int(settings.max_queue_mb * 1024 * 1024),
        ttl_s=settings.delete_results_after_m * 60,
        refresh_on_read=settings.refresh_expiration_time_on_usage,
        max_results=settings.max_stored_results,
    )
    if settings.queue_backend == "memory":
        return MemoryTaskQueue(**options)  # type: ignore[arg-type]
    from .redis_queue import RedisTaskQueue  # `redis` is optional: asrd[redis]

    assert settings.redis_url
    return RedisTaskQueue(
        settings.redis_url,
        prefix=settings.redis_prefix,
        lease_s=settings.task_lease_s,
        **options,  # type: ignore[arg-type]
    )
