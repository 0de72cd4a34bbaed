"""Trailing slashes: `POST /v1/audio/transcriptions/` is served as `/v1/audio/transcriptions`.

Starlette answers such a path with a 307 redirect to the path without the slash, which a
client posting a body (curl, most HTTP libraries) does not follow: it gets an empty 307. Here
the slash is dropped before routing instead, whenever the path without it has a route (so
`/v1/models/` is the list, not the model named "").
Outermost, so that every middleware (API keys, limits, metrics) sees the path it will serve.
"""

from __future__ import annotations

from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlashMiddleware:
    def __init__(self, app: ASGIApp, router: Router):
        self.app, self.router = app, router

    def _routed(self, scope: Scope, path: str) -> bool:
        probe = {**scope, "path": path}
        return any(
            route.matches(probe)[0] is not Match.NONE
            for route in self.router.routes
            if not isinstance(route, Mount)  # static files: their paths are their own
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            stripped = path.rstrip("/")
            if stripped != path and stripped and self._routed(scope, stripped):
                scope = {**scope, "path": stripped}
        await self.app(scope, receive, send)
