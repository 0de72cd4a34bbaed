"""Request limits: multipart form shapes, the body size (enforced while the body streams in,
not after reading it all) and the per-request deadline."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class BodyTooLarge(ApiError):
    def __init__(self, upload_limit_bytes: int):
        super().__init__(
            413,
            "too_large",
            f"the upload is larger than the limit of {upload_limit_bytes / 1024 / 1024:g} MB "
            "(MAX_UPLOAD_MB)",
        )


class BodySizeLimitMiddleware:
    """Answer 413 as soon as a body passes the limit: at once from `Content-Length`, or at
    the chunk that crosses it for a streamed (chunked) body.

    The limit is the upload limit itself, plus `form_overhead_bytes` for a multipart form
    (boundaries and fields around the file; routes check the file's own size)."""

    def __init__(self, app: ASGIApp, upload_limit_bytes: int, form_overhead_bytes: int):
        self.app, self.upload_limit = app, upload_limit_bytes
        self.form_limit = upload_limit_bytes + form_overhead_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        is_form = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.form_limit if is_form else self.upload_limit
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._reject(scope, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(self.upload_limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        error = BodyTooLarge(self.upload_limit)
        await send_error(scope, send, 413, error.code, error.message, {"Connection": "close"})


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
