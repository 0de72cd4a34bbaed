"""Connections: uvicorn's h11 protocol hardened against clients that are slow or many on
purpose (a request-header timeout, a connection cap that closes idle connections first), and
accept errors logged once per burst instead of once per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from typing import ClassVar

import h11
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .errors import error_body, send_error

log = logging.getLogger(__name__)

# Connections refused while every connection is busy, waiting to be told so (503) once their
# request headers arrive; more are closed at once.
MAX_REFUSING = 64


class Every:
    """Lets one event through per `interval_s` and counts the ones it held back."""

    def __init__(self, interval_s: float = 60.0):
        self.interval_s, self.held = interval_s, 0
        self._last = -interval_s - 1.0

    def __call__(self) -> int | None:
        """None to stay quiet; else how many events were held back since the last one."""
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.held += 1
            return None
        held, self.held, self._last = self.held, 0, now
        return held


class AcceptErrorFilter(logging.Filter):
    """asyncio logs "socket.accept() out of system resource" with a traceback for every failed
    accept (out of file descriptors: thousands a second under a flood). Let one line through
    per minute, without the traceback, with the number held back."""

    def __init__(self, interval_s: float = 60.0):
        super().__init__()
        self.every = Every(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        held = self.every()
        if held is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg = (
            "can't accept connections: %s; asyncio retries every second (raise the open-files "
            "limit or lower MAX_CONNECTIONS)%s"
        )
        record.args = (error or "out of system resources", f"; {held} more held back" * bool(held))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class ConnectionTable:
    """The open connections: idle ones (no request in progress) oldest first, busy ones, and
    those refused while every connection was busy."""

    def __init__(self, cap: int):
        self.cap = cap
        self.idle: OrderedDict[AsrdProtocol, None] = OrderedDict()
        self.busy: set[AsrdProtocol] = set()
        self.refusing: set[AsrdProtocol] = set()
        self._report = Every()

    def __len__(self) -> int:
        return len(self.idle) + len(self.busy)

    def open(self, conn: AsrdProtocol) -> bool:
        """Take a new connection, closing the longest-idle one at the cap. False: every
        connection is busy, refuse this one."""
        if len(self) >= self.cap:
            if not self.idle:
                self.refusing.add(conn)
                self._log("every connection is busy: refusing new ones with 503")
                return False
            oldest, _ = self.idle.popitem(last=False)
            oldest.evict()
            self._log("closing the longest-idle connections to make room")
        self.idle[conn] = None
        return True

    def set_busy(self, conn: AsrdProtocol) -> None:
        if conn in self.idle:
            del self.idle[conn]
            self.busy.add(conn)

    def set_idle(self, conn: AsrdProtocol) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
            self.idle[conn] = None  # the newest idle

    def close(self, conn: AsrdProtocol) -> None:
        self.idle.pop(conn, None)
        self.busy.discard(conn)
        self.refusing.discard(conn)

    def _log(self, what: str) -> None:
        held = self._report()
        if held is not None:
            more = f" ({held} more times in the last minute)" if held else ""
            log.warning("MAX_CONNECTIONS (%d) reached: %s%s", self.cap, what, more)


def _raw_response(status: int, reason: str, body: dict) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for answers given before h11
    has a request to answer."""
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + payload


class AsrdProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus:

    - a request's headers must be complete within HEADER_TIMEOUT_S of the connection opening or
      of its previous response (else 408 if part of a request came, and the connection closes);
    - at most `table.cap` connections: a new one closes the longest-idle connection, or, if
      every connection is busy, is answered 503 and closed;
    - JSON instead of uvicorn's plain-text 400 for malformed HTTP.

    `serve()` makes a subclass with the class attributes set."""

    table: ClassVar[ConnectionTable]
    header_timeout_s: ClassVar[float]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._busy = self._partial = False
        self._header_timer: asyncio.TimerHandle | None = None
        if not self.table.open(self):
            if len(self.table.refusing) > MAX_REFUSING:
                self.transport.close()
                return
            self.app = self._refuse  # type: ignore[assignment]  # answers its request
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.close(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._busy and data:
            self._partial = True
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and not self.cycle.response_complete:  # a request began
            self._busy, self._partial = True, False
            self._cancel_header_timer()
            self.table.set_busy(self)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """A WebSocket (a live session) leaves the connection table: MAX_REALTIME_SESSIONS
        bounds those (the h11 protocol hands the socket over and never hears of it again).
        A connection refused for MAX_CONNECTIONS is refused here too."""
        self._cancel_header_timer()
        if self in self.table.refusing:
            message = f"too many connections (MAX_CONNECTIONS={self.table.cap}) and all busy"
            body = error_body("too_many_connections", message)
            self.transport.write(_raw_response(503, "Service Unavailable", body))
            self.transport.close()
            return
        self.table.close(self)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        # Idle before uvicorn looks for a pipelined request (which makes it busy again).
        self._busy = self._partial = False
        self.table.set_idle(self)
        if not self.transport.is_closing():
            self._arm_header_timer()
        super().on_response_complete()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one."""
        self._cancel_header_timer()
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_response(400, "Bad Request", error_body("bad_request", msg)))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._busy or self.transport.is_closing():
            return
        # Part of a new request came, never all of its headers (as opposed to the rest of a
        # body whose request was already answered: the connection just closes).
        if self._partial and self.conn.their_state is h11.IDLE:
            limit = f"HEADER_TIMEOUT_S ({self.header_timeout_s:g} s)"
            body = error_body("request_timeout", f"the request headers took longer than {limit}")
            self.transport.write(_raw_response(408, "Request Timeout", body))
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"too many connections (MAX_CONNECTIONS={self.table.cap}) and all busy; retry"
        headers = {"Retry-After": "2", "Connection": "close"}
        await send_error(scope, send, 503, "too_many_connections", message, headers)


class AsrdWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, knowing that a handshake refused with an HTTP
    answer (ASGI's `websocket.http.response`: a 401, a 503) is complete: uvicorn would log
    "ASGI callable returned without completing handshake" as an error for every refusal."""

    async def send(self, message: Message) -> None:  # type: ignore[override]
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True
