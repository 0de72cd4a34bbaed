"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartParser

from . import __version__
from .api import asr, docs, health, manage, openai, realtime, tasks, web
from .audio_lanes import AudioLanes
from .auth import ApiKeyMiddleware
from .budget import MemoryBudget
from .config import Settings, load_settings
from .errors import document_errors, error_response, install_error_handlers
from .limits import (
    FORM_LIMITS,
    BodySizeLimitMiddleware,
    RequestTimeoutMiddleware,
    UploadRateMiddleware,
)
from .metrics import UNLIMITED_PATHS, Metrics, MetricsMiddleware
from .realtime.ticker import PartialTicker
from .registry import ModelRegistry
from .shutdown import ShutdownMiddleware, ShutdownState
from .slashes import TrailingSlashMiddleware
from .slot import ModelState
from .tasks import MemoryTaskQueue, QueueUnavailable, TaskQueue, TaskWorker
from .tasks.factory import create_queue
from .tasks.queue import ANNOUNCE_S

if TYPE_CHECKING:
    from .tasks.remote import SyncJobRunner  # imports `redis`: only with QUEUE_BACKEND=redis

log = logging.getLogger(__name__)

# Room for multipart framing and form fields around an upload of exactly MAX_UPLOAD_MB.
BODY_OVERHEAD_BYTES = 1024 * 1024


def create_app(
    settings: Settings | None = None,
    *,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. The model loads in the background after start-up; `/hc` says when it's
    ready. `on_load_failure` is called with the reason if it can't load (the CLI exits then)."""
    settings = settings or load_settings()
    if settings.role == "api":  # no model for tasks; the sync routes load one on demand
        settings = settings.model_copy(update={"load_model_on_startup": False})
    metrics = Metrics()
    # Begun by the server when SIGTERM/SIGINT arrives (or by the lifespan's end without one).
    shutdown = ShutdownState(settings.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        audio = AudioLanes(settings)
        models = ModelRegistry(settings, audio)
        queue = create_queue(settings)
        # ROLE=api runs no tasks: they wait in Redis for the workers.
        worker = TaskWorker(queue, models, audio, settings) if settings.role != "api" else None
        # Live sessions' audio conversion and speech scoring (a few ms per append), off the loop.
        live = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-realtime")
        app.state.realtime_executor = live
        ticker = PartialTicker(settings.realtime_partial_interval_ms / 1000)
        app.state.partial_ticker = ticker
        app.state.models, app.state.audio = models, audio
        app.state.task_queue, app.state.task_worker = queue, worker
        sync_runner = _scale_out(app, settings, queue, models, worker)
        for slot in models.slots:
            metrics.watch_model(slot)
        if isinstance(queue, MemoryTaskQueue):
            metrics.watch_queue(lambda: queue.depth)
        metrics.watch_audio(audio)
        metrics.watch_budget("decoded_audio", lambda: audio.budget.used)

        async def load() -> None:
            try:
                await models.start()
            finally:
                if worker is not None:
                    worker.ready.set()
            default = models.default
            if default.state is ModelState.FAILED and on_load_failure:
                on_load_failure(default.error or "unknown error")

        async def stop_tasks() -> None:
            # As soon as the shutdown begins: no new task starts, the waiting ones fail.
            await shutdown.started.wait()
            if worker is not None:
                worker.stop()
                await worker.fail_pending()

        background = [
            asyncio.create_task(load()),
            asyncio.create_task(stop_tasks()),
            asyncio.create_task(_watch_cluster(queue, worker, sync_runner, metrics)),
        ]
        if worker is not None:
            background.append(asyncio.create_task(worker.run()))
        if sync_runner is not None:
            background.append(asyncio.create_task(sync_runner.run()))
        if settings.run_result_expiry_check_m > 0 and settings.role != "worker":
            background.append(
                asyncio.create_task(_sweep(queue, settings.run_result_expiry_check_m * 60))
            )
        try:
            yield
        finally:
            # The running task may finish within what is left of SHUTDOWN_GRACE_S (counted
            # from the start of the shutdown, which requests in progress shared); tasks
            # submitted meanwhile fail; a task still running then is cut (and fails, or goes
            # back to a shared queue for another worker).
            shutdown.begin()
            if worker is not None:
                worker.stop()
                await worker.fail_pending()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.idle.wait(), shutdown.remaining())
            if sync_runner is not None:  # takes no more; those running get what is left
                await sync_runner.stop(shutdown.remaining())
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # Jobs cut short leave the inference thread at the end of their batch: let them,
            # while this loop can still take their results, for a moment past the grace.
            until = time.monotonic() + shutdown.overtime(1.0)
            while models.job_count and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await queue.close()
            models.close()
            audio.close()
            live.shutdown(wait=False, cancel_futures=True)
            await ticker.close()

    app = FastAPI(
        title="asrd",
        version=__version__,
        summary="Whisper speech recognition server",
        lifespan=lifespan,
        form_limits=FORM_LIMITS,
        # /docs and /redoc are served from local copies of their scripts (see api/docs.py).
        docs_url=None,
        redoc_url=None,
    )
    # A trailing slash is dropped (TrailingSlashMiddleware), never answered with a 307.
    app.router.redirect_slashes = False
    uploads = MemoryBudget(settings.max_uploads_in_memory_bytes)
    metrics.watch_budget("uploads", lambda: uploads.used)
    app.state.settings, app.state.metrics, app.state.shutdown = settings, metrics, shutdown
    install_error_handlers(app)
    app.add_exception_handler(QueueUnavailable, _queue_unavailable)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app), UNLIMITED_PATHS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Innermost: a request cut short by the deadline is still counted, logged and limited.
    app.add_middleware(
        RequestTimeoutMiddleware, timeout_s=settings.request_timeout_s, exempt=UNLIMITED_PATHS
    )
    app.add_middleware(
        BodySizeLimitMiddleware,
        upload_limit_bytes=settings.max_upload_bytes,
        form_overhead_bytes=BODY_OVERHEAD_BYTES,
        memory=uploads,
        message_limit_bytes=settings.realtime_max_message_bytes,
    )
    app.add_middleware(UploadRateMiddleware, min_bytes_per_s=settings.min_upload_kb_s * 1024)
    if settings.api_keys:
        app.add_middleware(
            ApiKeyMiddleware,
            keys=settings.api_keys + settings.admin_api_keys,  # an admin is a user too
            protect_health=settings.protect_health,
            protect_metrics=settings.protect_metrics,
        )
    # Requests cut by the end of the shutdown grace get a JSON 503: nothing between here and
    # the server turns their cancellation into a 500, and the metrics still see the 503.
    app.add_middleware(ShutdownMiddleware, state=shutdown)
    # Outside the key check, so refused requests are counted and logged too.
    app.add_middleware(
        MetricsMiddleware,
        metrics=metrics,
        max_in_flight=settings.max_concurrent_requests,
        max_sessions=settings.max_realtime_sessions,
    )
    if settings.cors_origins:
        any_origin = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            allow_credentials=not any_origin,  # never `*` with credentials
        )
    # Outermost: every middleware sees `/v1/audio/transcriptions/` as the path it serves.
    app.add_middleware(TrailingSlashMiddleware, router=app.router)
    # Keep uploads in memory up to the body limit: Starlette would otherwise spool files over
    # 1 MB to disk, and asrd promises that audio never touches the disk.
    MultiPartParser.spool_max_size = max(
        MultiPartParser.spool_max_size, settings.max_upload_bytes + BODY_OVERHEAD_BYTES
    )
    app.include_router(health.router)
    if settings.role == "worker":  # no HTTP API: probes only
        return app
    app.include_router(asr.router)
    app.include_router(openai.router)
    app.include_router(realtime.router)
    app.include_router(tasks.router)
    app.include_router(manage.router)
    app.include_router(web.router)
    web.mount_static(app)
    docs.install(app)
    return app


def _scale_out(
    app: FastAPI,
    settings: Settings,
    queue: TaskQueue,
    models: ModelRegistry,
    worker: TaskWorker | None,
) -> SyncJobRunner | None:
    """With a shared (Redis) queue: a worker takes sync requests too (returned, to run), and a
    replica with SYNC_VIA_WORKERS sends its own to the workers (its routes see slots that run
    there)."""
    if not queue.shared:
        return None
    from .tasks.redis_queue import RedisTaskQueue
    from .tasks.remote import RemoteLink, RemoteModels, SyncJobRunner

    assert isinstance(queue, RedisTaskQueue)
    relayed = settings.sync_via_workers and settings.role != "worker"
    log.info("ROLE=%s: tasks in Redis under %s:*%s", settings.role, settings.redis_prefix,
             ", sync requests run on the workers" if relayed else "")  # fmt: skip
    if relayed:
        link = RemoteLink(queue, wait_s=settings.sync_worker_wait_s, lease_s=settings.task_lease_s)
        app.state.models = RemoteModels(models, link)
    return SyncJobRunner(queue, models, worker.ready) if worker is not None else None


async def _queue_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s (%s)", exc, exc.__cause__)
    message = "the task queue is unavailable (Redis unreachable); retry shortly"
    return error_response(503, "queue_unavailable", message, {"Retry-After": "5"}, request=request)


async def _watch_cluster(
    queue: TaskQueue,
    worker: TaskWorker | None,
    sync_runner: SyncJobRunner | None,
    metrics: Metrics,
) -> None:
    """Every ANNOUNCE_S: this process's worker says it is alive (and busy or not: a task or
    sync requests), and the metrics take the cluster's queue depth, oldest task's age and
    workers."""
    while True:
        try:
            if worker is not None:
                info = worker.info()
                if sync_runner is not None:
                    info["sync_requests"] = sync_runner.running
                    info["busy"] = info["busy"] or sync_runner.running > 0
                await queue.announce(worker.name, info)
            metrics.watch_cluster(await queue.stats(), await queue.workers())
        except QueueUnavailable:
            pass  # /hc and the routes say so; the gauges keep their last values
        except Exception:
            log.exception("reading the cluster's state failed")
        await asyncio.sleep(ANNOUNCE_S)


async def _sweep(queue: TaskQueue, every_s: float) -> None:
    """Delete expired results every RUN_RESULT_EXPIRY_CHECK_M minutes."""
    while True:
        await asyncio.sleep(every_s)
        try:
            removed = await queue.sweep()
        except QueueUnavailable:
            continue
        if removed:
            log.info("deleted %d expired results", removed)
