"""API keys (`API_KEYS`): every API route needs one, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import send_error

API_PREFIXES = ("/asr", "/v1/", "/api/")
# The log download has its own, stricter check (ADMIN_API_KEYS / trusted proxy).
OWN_AUTH = ("/api/v1/logs", "/api/v1/login")  # logs: admin keys; login: serves no data


def presented_key(headers: list[tuple[bytes, bytes]]) -> str:
    """The key from `Authorization: Bearer KEY` or `X-API-Key: KEY` ("" if none)."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return ""


def key_matches(key: str, keys: list[str]) -> bool:
    # compare_digest against every key (no early exit), so timing tells nothing.
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys]
    return bool(key) and any(matches)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str], protect_health: bool, protect_metrics: bool):
        self.app, self.keys = app, keys
        self.protect_health, self.protect_metrics = protect_health, protect_metrics

    def protected(self, path: str) -> bool:
        if path in OWN_AUTH:
            return False
        if path == "/hc":
            return self.protect_health
        if path == "/metrics":
            return self.protect_metrics
        return path.startswith(API_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
            or not self.protected(scope["path"])
            or key_matches(presented_key(scope["headers"]), self.keys)
        ):
            await self.app(scope, receive, send)
            return
        await send_error(
            scope,
            send,
            401,
            "invalid_api_key",
            "a valid API key is required: `Authorization: Bearer KEY` or `X-API-Key: KEY`",
            {"WWW-Authenticate": "Bearer"},
        )
