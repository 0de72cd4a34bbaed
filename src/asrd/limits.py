"""Request limits: multipart form shapes, the body size (enforced while the body streams in,
not after reading it all), the slowest upload rate and the per-request deadline."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .budget import BudgetExceeded, MemoryBudget
from .errors import ApiError, body_for, send_error

log = logging.getLogger(__name__)

# Multipart forms: one file (the audio), a few short fields. A form beyond these gets a 400
# before any field reaches a route; the file itself is capped by MAX_UPLOAD_MB.
FORM_MAX_FILES = 1
FORM_MAX_FIELDS = 32
FORM_MAX_FIELD_BYTES = 64 * 1024
FORM_LIMITS = {
    "max_files": FORM_MAX_FILES,
    "max_fields": FORM_MAX_FIELDS,
    "max_part_size": FORM_MAX_FIELD_BYTES,
}


# A JSON body is a small request (`{"url": ...}`), never audio: it is held to this much.
JSON_LIMIT_BYTES = 64 * 1024
# Uploads: the average rate is checked after this long, and no chunk may take longer.
UPLOAD_GRACE_S = 10.0
UPLOAD_IDLE_S = 30.0
CLOSE = {"Connection": "close"}  # the rest of the body is not read: the connection can't be reused


class BodyTooLarge(ApiError):
    def __init__(self, message: str):
        super().__init__(413, "too_large", message, CLOSE)


class UploadTooSlow(ApiError):
    def __init__(self, message: str):
        super().__init__(408, "upload_too_slow", message, CLOSE)


def is_json(content_type: bytes) -> bool:
    """`application/json` or any `+json` type, parameters aside."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class _BodyGuard:
    """Runs the app with a `receive` that may fail the request (raising `error`). Whatever the
    app then answers (FastAPI turns any error while it parses a form into "400 There was an
    error parsing the body"), the client gets `error`, and the connection is closed."""

    def __init__(self, scope: Scope, send: Send):
        self.scope, self._send = scope, send
        self.error: ApiError | None = None
        self.started = self._replaced = False

    def fail(self, error: ApiError) -> ApiError:
        self.error = error
        return error

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.error is not None:
                self._replaced = True
                await self.answer(self.error)
                return
        elif self._replaced:
            return  # the body of the answer we replaced
        await self._send(message)

    async def run(self, app: ASGIApp, receive: Receive) -> None:
        try:
            await app(self.scope, receive, self.send)
        except ApiError as exc:
            if exc is not self.error or self.started:
                raise
            await self.answer(exc)

    async def answer(self, error: ApiError) -> None:
        await send_error(self.scope, self._send, error.status, error.code, error.message,
                         error.headers or {})  # fmt: skip


class ServerBusy(ApiError):
    def __init__(self, message: str):
        super().__init__(503, "server_busy", message, {"Retry-After": "2", **CLOSE})


class BodySizeLimitMiddleware:
    """Answer 413 as soon as a body passes the limit: at once from `Content-Length`, or at
    the chunk that crosses it for a streamed (chunked) body.

    The limit is the upload limit itself, plus `form_overhead_bytes` for a multipart form
    (boundaries and fields around the file; routes check the file's own size), and
    JSON_LIMIT_BYTES for a JSON body. Bodies are held in memory, so all of them together are
    held to `memory` too (MAX_UPLOADS_IN_MEMORY_MB): 503 past it, never a wait on the loop."""

    def __init__(
        self,
        app: ASGIApp,
        upload_limit_bytes: int,
        form_overhead_bytes: int,
        memory: MemoryBudget | None = None,
        message_limit_bytes: int | None = None,
    ):
        self.app, self.upload_limit = app, upload_limit_bytes
        self.form_limit = upload_limit_bytes + form_overhead_bytes
        self.memory = memory
        self.message_limit = message_limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.message_limit is not None:
            await self._websocket(scope, receive, send, self.message_limit)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"")
        if is_json(content_type):
            limit = JSON_LIMIT_BYTES
            message = (
                f"a JSON body is limited to {JSON_LIMIT_BYTES // 1024} KB: send audio as the "
                "body itself or as a multipart form, not inside JSON"
            )
        else:
            is_form = content_type.lower().startswith(b"multipart/")
            limit = self.form_limit if is_form else self.upload_limit
            message = (
                f"the upload is larger than the limit of {self.upload_limit / 1024 / 1024:g} MB "
                "(MAX_UPLOAD_MB)"
            )
        guard = _BodyGuard(scope, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await guard.answer(BodyTooLarge(message))
            return
        held = self.memory.reservation() if self.memory else None
        try:
            if held is not None and declared.isdigit():
                held.grow(int(declared), wait_s=0)  # all of it at once: refused before reading
        except BudgetExceeded:
            await guard.answer(ServerBusy(_BUSY))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message_ = await receive()
            if message_["type"] == "http.request":
                size = len(message_.get("body", b""))
                received += size
                if received > limit:
                    raise guard.fail(BodyTooLarge(message))
                if held is not None and received > held.nbytes:
                    try:
                        held.grow(received - held.nbytes, wait_s=0)
                    except BudgetExceeded:
                        raise guard.fail(ServerBusy(_BUSY)) from None
            return message_

        try:
            await guard.run(self.app, limited_receive)
        finally:
            if held is not None:
                held.release()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """A WebSocket message over `limit` (REALTIME_MAX_MESSAGE_MB) closes the socket with
        1009 (the server's own frame limit, set from the same setting, usually comes first);
        the app sees a disconnect."""

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                size = len(message.get("text") or "") + len(message.get("bytes") or b"")
                if size > limit:
                    reason = "message too big (REALTIME_MAX_MESSAGE_MB)"
                    await send({"type": "websocket.close", "code": 1009, "reason": reason})
                    return {"type": "websocket.disconnect", "code": 1009, "reason": reason}
            return message

        await self.app(scope, limited_receive, send)


_BUSY = (
    "the server holds as many uploads in memory as it may (MAX_UPLOADS_IN_MEMORY_MB); retry shortly"
)


class UploadRateMiddleware:
    """Slow bodies can't hold the request slots: after its first UPLOAD_GRACE_S, a body must
    have come at `min_bytes_per_s` on average (MIN_UPLOAD_KB_S; 0: any rate), and no chunk may
    take over UPLOAD_IDLE_S; else 408 `upload_too_slow` and the connection is closed.

    Each wait for the next chunk is given the time left before the client falls behind, so a
    stalled upload is cut at that moment, not at its next byte."""

    def __init__(self, app: ASGIApp, min_bytes_per_s: float,
                 grace_s: float = UPLOAD_GRACE_S, idle_s: float = UPLOAD_IDLE_S):  # fmt: skip
        self.app, self.min_rate, self.grace_s, self.idle_s = app, min_bytes_per_s, grace_s, idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        received, more_body = 0, True
        guard = _BodyGuard(scope, send)

        async def timed_receive() -> Message:
            nonlocal last, received, more_body
            if not more_body:  # the body is in: waiting for a disconnect is not an upload
                return await receive()
            deadline = last + self.idle_s
            if self.min_rate:
                deadline = min(deadline, started + max(self.grace_s, received / self.min_rate))
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                now = loop.time()
                error = UploadTooSlow(self._explain(received, now - started, now - last))
                raise guard.fail(error) from None
            last = loop.time()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more_body = message.get("more_body", False)
            else:
                more_body = False
            return message

        await guard.run(self.app, timed_receive)
        if guard.error is not None:
            log.warning("%s %s: %s", scope["method"], scope["path"], guard.error.message)

    def _explain(self, received: int, elapsed_s: float, idle_s: float) -> str:
        if idle_s >= self.idle_s:
            return f"the upload sent nothing for {self.idle_s:g} s"
        return (
            f"the upload is too slow: {received} bytes in {elapsed_s:.0f} s, under the minimum "
            f"of {self.min_rate / 1024:g} KB/s (MIN_UPLOAD_KB_S)"
        )


class RequestTimeoutMiddleware:
    """Cancel a request still running after `timeout_s` (REQUEST_TIMEOUT_S), whatever it is
    doing: reading a slow upload, downloading, decoding or waiting on the model (whose job
    stops at its next batch). 504 if nothing was sent yet; a Server-Sent Events stream that
    has begun ends with an error event."""

    def __init__(self, app: ASGIApp, timeout_s: float, exempt: tuple[str, ...] = ()):
        self.app, self.timeout_s, self.exempt = app, timeout_s, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.timeout_s or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        started = finished = False
        event_stream = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished, event_stream
            if message["type"] == "http.response.start":
                started = True
                headers = dict(message.get("headers", ()))
                event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # the app's own timeout, not ours
            log.warning("%s %s cancelled after %g s (REQUEST_TIMEOUT_S)",
                        scope["method"], scope["path"], self.timeout_s)  # fmt: skip
            message = (
                f"the request took longer than REQUEST_TIMEOUT_S ({self.timeout_s:g} s); "
                "send long audio to the task API (POST /api/v1/transcribe) instead"
            )
            if not started:
                await send_error(scope, send, 504, "request_timeout", message, {})
            elif event_stream and not finished:
                error = body_for(scope["path"], 504, "request_timeout", message)
                chunk = f"data: {json.dumps(error)}\n\n".encode()
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
