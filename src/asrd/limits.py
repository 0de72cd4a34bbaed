"""Request body size limit, enforced while the body streams in (not after reading it all)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, send_error


class BodyTooLarge(ApiError):
    def __init__(self, upload_limit_bytes: int):
        super().__init__(
            413,
            "too_large",
            f"the upload is larger than the limit of {upload_limit_bytes / 1024 / 1024:g} MB "
            "(MAX_UPLOAD_MB)",
        )


class BodySizeLimitMiddleware:
    """Answer 413 as soon as a body passes `max_bytes`: at once from `Content-Length`, or at
    the chunk that crosses the limit for a streamed (chunked) body."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_limit_bytes: int):
        # max_bytes: the upload limit plus room for multipart framing and form fields.
        self.app, self.max_bytes, self.upload_limit = app, max_bytes, upload_limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
