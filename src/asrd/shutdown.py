"""Shutdown: one deadline (SHUTDOWN_GRACE_S) for requests in progress and the running task,
and a JSON answer for every request it cuts."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import body_for, send_error

log = logging.getLogger(__name__)

# After SHUTDOWN_GRACE_S, the little time the shutdown may still take: requests cut by the
# deadline send their 503 (at most CUT_REQUESTS_S), jobs cut leave the inference thread,
# threads end. The process is gone by then, whatever still runs.
OVERTIME_S = 1.5
CUT_REQUESTS_S = 0.5


class ShutdownState:
    """When the shutdown began and when its grace ends: one deadline for requests in progress
    and the running task. Set by `Server.shutdown`, read by the lifespan and the middleware."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.deadline: float | None = None  # time.monotonic()
        self.started = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.deadline is not None

    def begin(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace_s
            self.started.set()

    def remaining(self) -> float:
        """Seconds left of the grace."""
        return max(0.0, (self.deadline or time.monotonic()) - time.monotonic())

    def overtime(self, at_most: float) -> float:
        """Seconds a step after the grace may take: `at_most`, within OVERTIME_S past it."""
        end = (self.deadline or time.monotonic()) + OVERTIME_S
        return max(0.0, min(at_most, end - time.monotonic()))


class ShutdownMiddleware:
    """A request still running at the end of the shutdown grace is cancelled; answer it with a
    503 `shutting_down` JSON error in its route's shape (a started event stream gets an error
    event) instead of letting uvicorn answer a plain-text 500."""

    def __init__(self, app: ASGIApp, state: ShutdownState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = event_stream = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished, event_stream
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers", ())).get(b"content-type", b"")
                event_stream = content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.state.active or task is None:
                raise
            task.uncancel()  # the request is over; what is left is telling the client
            message = "the server is shutting down (SHUTDOWN_GRACE_S ran out); retry elsewhere"
            log.warning("%s %s cut by the shutdown", scope["method"], scope["path"])
            if not started:
                headers = {"Connection": "close", "Retry-After": "5"}
                await send_error(scope, send, 503, "shutting_down", message, headers)
            elif event_stream and not finished:
                error = body_for(scope["path"], 503, "shutting_down", message)
                chunk = f"data: {json.dumps(error)}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
            # Any other started response is left incomplete: uvicorn closes the connection.
