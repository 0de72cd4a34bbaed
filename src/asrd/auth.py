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


# OpenAI's browser clients can't set headers on a WebSocket: they offer the key as a
# subprotocol, `openai-insecure-api-key.KEY` (never chosen by the server, never echoed).
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a WebSocket handshake offers, in order."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return offered


def websocket_key(headers: list[tuple[bytes, bytes]]) -> str:
    """The key of a WebSocket handshake: from the headers, else from its subprotocols."""
    key = presented_key(headers)
    if key:
        return key
    for protocol in subprotocols(headers):
        if protocol.startswith(KEY_SUBPROTOCOL):
            return protocol.removeprefix(KEY_SUBPROTOCOL)
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
        kind, key = scope["type"], ""
        if kind == "websocket":
            key = websocket_key(scope["headers"])
        elif kind == "http":
            key = presented_key(scope["headers"])
        if (
            kind not in ("http", "websocket")
            or scope.get("method") == "OPTIONS"  # CORS preflights carry no credentials
            or not self.protected(scope["path"])
            or key_matches(key, self.keys)
        ):
            await self.app(scope, receive, send)
            return
        await send_error(
            scope,
            send,
            401,
            "invalid_api_key",
            "a valid API key is required: `Authorization: Bearer KEY` or `X-API-Key: KEY` (on a "
            "WebSocket, also the subprotocol `openai-insecure-api-key.KEY`)",
            {"WWW-Authenticate": "Bearer"},
        )
