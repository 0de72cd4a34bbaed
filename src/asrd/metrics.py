"""Prometheus metrics (`GET /metrics`) and the in-flight request limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import send_error
from .logs import escape, request_target

if TYPE_CHECKING:
    from .audio_lanes import AudioLanes
    from .slot import ModelSlot
    from .tasks import QueueStats

ACCESS = logging.getLogger("asrd.access")

UNLIMITED_PATHS = ("/hc", "/metrics")
# Label values come from bounded sets only, so no client can grow /metrics without end: any
# other method is `other`, a path no route matched is `unmatched`.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
MAX_LOGGED_METHOD = 32


class Metrics:
    """One registry per app, so several apps (tests) never share or clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "asrd_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "asrd_request_duration_seconds", "HTTP request latency by route", ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("asrd_requests_in_flight", "HTTP requests in progress", registry=r)
        self.rejected = Counter(
            "asrd_requests_rejected", "Requests refused by MAX_CONCURRENT_REQUESTS", registry=r
        )
        # Per model: the label's values are the served models (a bounded set).
        self.audio_seconds = Counter(
            "asrd_audio_seconds", "Seconds of audio transcribed", ["model"], registry=r
        )
        self.realtime = Histogram(
            "asrd_realtime_factor", "Audio seconds per second of processing, per transcription",
            ["model"], buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200), registry=r,
        )  # fmt: skip
        self.batch_windows = Histogram(
            "asrd_batch_windows", "Audio windows per decoding batch", ["model"],
            buckets=(1, 2, 4, 6, 8, 12, 16, 24, 32, 64), registry=r,
        )  # fmt: skip
        self.model_loaded = Gauge(
            "asrd_model_loaded", "1 if the model is in memory", ["model"], registry=r
        )
        self.model_loads = Counter(
            "asrd_model_loads", "Times the model was loaded (start-up, on demand)", ["model"],
            registry=r,
        )  # fmt: skip
        self.transcriptions = Gauge(
            "asrd_transcriptions_in_progress",
            "Transcriptions the model is working on or will take next (all routes)", ["model"],
            registry=r,
        )  # fmt: skip
        self.engine_seconds = Counter(
            "asrd_engine_seconds",
            "Seconds a model's scheduler thread spent per stage (see docs/operations.md)",
            ["model", "stage"], registry=r,
        )  # fmt: skip
        self.audio_processing = Counter(
            "asrd_audio_processing_seconds",
            "Seconds spent decoding audio and finding its speech (VAD), all models",
            ["stage"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("asrd_task_queue_depth", "Tasks waiting", registry=r)
        self._live_depth = False
        # The cluster's view (the same on every process of a Redis deployment; refreshed every
        # ANNOUNCE_S): what an autoscaler reads.
        self.cluster_depth = Gauge(
            "asrd_queue_depth", "Tasks waiting in the (cluster's) queue", registry=r
        )
        self.oldest_age = Gauge(
            "asrd_queue_oldest_age_seconds", "Age of the oldest waiting task (0: none)",
            registry=r,
        )  # fmt: skip
        # One series per live worker (the label set follows the workers, so it stays bounded).
        self.worker_busy = Gauge(
            "asrd_worker_busy", "1 while the worker runs a task", ["worker"], registry=r
        )
        # Live transcription (the Realtime API's WebSocket sessions).
        self.realtime_sessions = Gauge(
            "asrd_realtime_sessions", "Live transcription sessions open", registry=r
        )
        self.realtime_rejected = Counter(
            "asrd_realtime_sessions_rejected", "Sessions refused by MAX_REALTIME_SESSIONS",
            registry=r,
        )  # fmt: skip
        self.realtime_audio = Counter(
            "asrd_realtime_audio_seconds", "Seconds of audio received by live sessions",
            ["model"], registry=r,
        )  # fmt: skip
        self.realtime_completion = Histogram(
            "asrd_realtime_completion_seconds",
            "From the end of a live turn (speech_stopped, or the client's commit) to its "
            "`completed` event", ["model"],
            buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30), registry=r,
        )  # fmt: skip
        self.realtime_first_delta = Histogram(
            "asrd_realtime_first_delta_seconds",
            "From the start of a live turn's speech (speech_started) to its first delta",
            ["model"], buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=r,
        )  # fmt: skip

        self.memory = Gauge(
            "asrd_memory_budget_used_bytes",
            "Bytes held against a server-wide memory budget (decoded audio, request bodies)",
            ["budget"], registry=r,
        )  # fmt: skip

    def watch_budget(self, name: str, used: Callable[[], float]) -> None:
        self.memory.labels(name).set_function(used)

    def watch_model(self, slot: ModelSlot) -> None:
        """Report `slot`'s state, transcriptions, batches and loads under its id."""
        model = slot.public_id
        self.model_loaded.labels(model).set_function(lambda: float(slot.loaded))
        self.transcriptions.labels(model).set_function(lambda: slot.scheduler.job_count)
        batches = self.batch_windows.labels(model)
        slot.scheduler.on_batch = batches.observe
        audio_seconds, realtime = self.audio_seconds.labels(model), self.realtime.labels(model)
        loads = self.model_loads.labels(model)

        def transcribed(audio_s: float, elapsed_s: float) -> None:
            audio_seconds.inc(audio_s)
            if elapsed_s > 0:
                realtime.observe(audio_s / elapsed_s)

        slot.on_transcribed = transcribed
        slot.on_load = lambda _seconds: loads.inc()
        engine = self.engine_seconds
        slot.scheduler.clock.on_stage = lambda stage, s: engine.labels(model, stage).inc(s)

    def watch_audio(self, lanes: AudioLanes) -> None:
        """Report the audio threads' decoding and VAD time."""
        lanes.on_stage = lambda stage, s: self.audio_processing.labels(stage).inc(s)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """The in-memory queue's depth, read live."""
        self.queue_depth.set_function(depth)
        self._live_depth = True

    def watch_cluster(self, stats: QueueStats, workers: list[dict]) -> None:
        """The queue's depth and oldest task's age, and each live worker's busy state."""
        self.cluster_depth.set(stats.depth)
        self.oldest_age.set(round(stats.oldest_age_s, 3))
        if not self._live_depth:  # a shared queue: its depth is read here
            self.queue_depth.set(stats.depth)
        self.worker_busy.clear()
        for worker in workers:
            self.worker_busy.labels(worker["worker"]).set(float(worker["busy"]))


class MetricsMiddleware:
    """Counts and times every request by its route template (bounded label values), writes
    the access log line (method, path and query, status, time; never a body), and answers 503
    at once beyond `max_in_flight` concurrent requests (health and metrics excepted)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_in_flight: int | None,
        max_sessions: int | None = None,
    ):
        self.app, self.metrics, self.max_in_flight = app, metrics, max_in_flight
        self.max_sessions = max_sessions
        self._in_flight = 0
        self._sessions = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limited = scope["path"] not in UNLIMITED_PATHS
        if limited and self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
            self.metrics.rejected.inc()
            await _reject(scope, send, self.max_in_flight)
            _access_log(scope, 503, 0.0)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self._in_flight += limited
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._in_flight -= limited
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            _access_log(scope, status, elapsed)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket (a live session, however long): counted apart from requests, at most
        `max_sessions` at once (MAX_REALTIME_SESSIONS; more are refused with 503), logged when
        it ends with 101 if it was accepted, else the status of its refusal."""
        if self.max_sessions is not None and self._sessions >= self.max_sessions:
            self.metrics.realtime_rejected.inc()
            message = (
                f"too many live sessions (MAX_REALTIME_SESSIONS={self.max_sessions}); retry shortly"
            )
            await send_error(scope, send, 503, "too_many_sessions", message, {"Retry-After": "5"})
            _access_log(scope, 503, 0.0)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close" and status == 500:
                status = 403  # closed before the handshake: the server refuses it
            await send(message)

        self._sessions += 1
        self.metrics.realtime_sessions.inc()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._sessions -= 1
            self.metrics.realtime_sessions.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels("GET", route, str(status)).inc()
            _access_log(scope, status, elapsed)


def _access_log(scope: Scope, status: int, elapsed_s: float) -> None:
    # The target as sent (`%0a` stays `%0a`), the method escaped and cut short: one line, always.
    method = escape(scope.get("method", "GET")[:MAX_LOGGED_METHOD])
    ACCESS.info("%s %s %d %.0fms", method, request_target(scope), status, elapsed_s * 1000)


async def _reject(scope: Scope, send: Send, limit: int) -> None:
    message = f"too many requests in progress (MAX_CONCURRENT_REQUESTS={limit}); retry shortly"
    await send_error(scope, send, 503, "server_busy", message, {"Retry-After": "2"})
