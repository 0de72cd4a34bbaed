"""OpenAI's Realtime API, transcription sessions: `GET /v1/realtime?intent=transcription`
upgraded to a WebSocket (see `realtime/` for the session itself).

The handshake is checked like any request (API keys, also in the subprotocol browsers use;
MAX_REALTIME_SESSIONS) by the middlewares; here: the intent, the model, the origin. Then one
task reads client events (idle timeout, the session's length), one writes server events (a
client that stops reading them is closed once REALTIME_OUTBOX_EVENTS are waiting), and the
session decodes turns on the model's scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..auth import KEY_SUBPROTOCOL, subprotocols
from ..config import Settings
from ..errors import openai_error_body
from ..realtime.protocol import Shape, error_event
from ..realtime.session import RealtimeSession, SessionHooks, SessionLimits, SessionOver
from ..registry import ModelNotServed
from ..slot import ModelNotReady
from .deps import MetricsDep, ModelsDep, PartialTickerDep, RealtimeThreadDep, SettingsDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["OpenAI Realtime API"])

OUTBOX_EVENTS = 1000  # server events waiting for a client that doesn't read them
DRAIN_S = 5.0  # a session ended by a limit still sends the turns being decoded, this long
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket,
    models: ModelsDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    thread: RealtimeThreadDep,
    ticker: PartialTickerDep,
) -> None:
    params = websocket.query_params
    intent = params.get("intent")
    if intent not in (None, "transcription"):
        await _deny(websocket, 400, "unsupported_intent", "asrd serves transcription sessions "
                    "only: connect with `?intent=transcription`", "intent")  # fmt: skip
        return
    if not _origin_allowed(websocket, settings):
        await _deny(websocket, 403, "origin_not_allowed", "this page's origin may not open live "
                    "sessions (CORS_ORIGINS)", None)  # fmt: skip
        return
    model = params.get("model") or None
    if model is not None:
        try:
            models.get(model)
        except ModelNotServed as exc:
            if intent is None:  # a conversation model: not what asrd serves
                await _deny(websocket, 404, "model_not_found", str(exc), "model")
                return
            model = None  # with intent=transcription: the SDK's name for OpenAI's own model
    offered = subprotocols(websocket.scope["headers"])
    beta = BETA_SUBPROTOCOL in offered or "realtime=v1" in websocket.headers.get("openai-beta", "")
    shape: Shape = "beta" if beta else "ga"
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    overflow = asyncio.Event()

    async def send(event: dict[str, Any]) -> None:
        if outbox.qsize() >= OUTBOX_EVENTS:
            overflow.set()
            return
        outbox.put_nowait(event)

    hooks = SessionHooks(
        audio=lambda m, s: metrics.realtime_audio.labels(m).inc(s),
        completed=lambda m, s: metrics.realtime_completion.labels(m).observe(s),
        first_delta=lambda m, s: metrics.realtime_first_delta.labels(m).observe(s),
    )
    limits = SessionLimits(
        max_buffer_bytes=settings.realtime_max_buffer_bytes,
        partial_interval_s=settings.realtime_partial_interval_ms / 1000,
        max_session_s=settings.realtime_max_session_s,
    )
    session = RealtimeSession(
        models=models,
        executor=thread,
        limits=limits,
        send=send,
        shape=shape,
        model=model,
        hooks=hooks,
        ticker=ticker,
    )
    if not session.slot.accepting:
        await _deny(websocket, 503, "model_not_ready", session.slot.error or "the model is not "
                    "loaded yet", None, {"Retry-After": "5"})  # fmt: skip
        return
    # A browser that offered subprotocols needs one chosen: `realtime`, never the key.
    chosen = next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), None)
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else chosen)
    started = time.monotonic()
    code, reason = 1000, ""
    writer = asyncio.create_task(_write(websocket, outbox))
    try:
        try:
            await session.start()
        except ModelNotReady as exc:
            await send(error_event(str(exc), code="model_not_ready", kind="server_error"))
            raise SessionOver(1013, "the model is not available; retry shortly") from None
        reader = asyncio.create_task(_read(websocket, session, settings))
        watch = asyncio.create_task(overflow.wait())
        done, _ = await asyncio.wait({reader, writer, watch}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if watch in done:
            code, reason = 1008, "the client is not reading its events"
            reader.cancel()
        elif reader in done:
            code, reason = reader.result()
            if code is not None:
                await session.drain(DRAIN_S)
        else:
            reader.cancel()
            code = None  # the client is gone
        await asyncio.wait({reader})  # cancelled or done: its own error is not ours
    except SessionOver as exc:
        code, reason = exc.code, exc.reason
    except Exception:  # a bug: this session ends, the server goes on
        log.exception("live session %s failed", session.id)
        code, reason = 1011, "internal error"
    finally:
        await session.close()
        if code is not None and not writer.done():
            outbox.put_nowait(None)  # what is queued goes out first
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), 2.0)
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
        if code is not None and websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code, reason[:120])
        log.info("live session %s ended after %.0f s: %s", session.id,
                 time.monotonic() - started, reason or "the client closed it")  # fmt: skip


async def _read(
    websocket: WebSocket, session: RealtimeSession, settings: Settings
) -> tuple[int | None, str]:
    """Client events until the client leaves (None) or a limit ends the session (its close
    code and reason)."""
    ends = time.monotonic() + settings.realtime_max_session_s
    idle_s = settings.realtime_idle_timeout_s
    while True:
        timeout = min(idle_s, ends - time.monotonic())
        try:
            async with asyncio.timeout(max(timeout, 0)):
                message = await websocket.receive()
        except TimeoutError:
            if time.monotonic() >= ends:
                limit = settings.realtime_max_session_s
                await session.send(error_event(
                    f"the session reached its limit of {limit:g} s (REALTIME_MAX_SESSION_S)",
                    code="session_expired"))  # fmt: skip
                return 1008, "session time limit (REALTIME_MAX_SESSION_S)"
            if session.busy:
                continue  # waiting for its turn's text is not idling
            return 1000, "idle timeout (REALTIME_IDLE_TIMEOUT_S)"
        if message["type"] == "websocket.disconnect":
            return None, ""
        text = message.get("text")
        if text is None:
            await session.send(error_event(
                "binary messages are not supported: send JSON text events (audio in base64)",
                code="invalid_event"))  # fmt: skip
            continue
        try:
            await session.handle(text)
        except SessionOver as exc:
            await session.send(error_event(exc.reason, code="session_expired"))
            return exc.code, exc.reason


async def _write(websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any] | None]) -> None:
    """Server events, in order, until told to stop (None) or the client is gone."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (event := await outbox.get()) is not None:
            await websocket.send_text(json.dumps(event))


async def _deny(
    websocket: WebSocket,
    status: int,
    code: str,
    message: str,
    param: str | None,
    headers: dict[str, str] | None = None,
) -> None:
    """Refuse the handshake with an HTTP error in OpenAI's shape (or close 1008 where the
    server can't send one)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = openai_error_body(status, code, message, param)
        await websocket.send_denial_response(JSONResponse(body, status, headers))
    else:
        await websocket.close(1008, message[:120])


def _origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers let any page open a WebSocket anywhere: one from another site's page is
    refused unless CORS_ORIGINS lets that site in (clients that aren't browsers send none)."""
    origin = websocket.headers.get("origin")
    if not origin or "*" in settings.cors_origins or origin in settings.cors_origins:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()
