"""How asrd serves HTTP: its own listening sockets (bound before anything slow starts), uvicorn
with a hardened h11 protocol (request-header timeout, a connection cap that closes idle
connections first), and a graceful shutdown with one deadline for requests and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import ConfigError, Settings
from .errors import body_for, error_body, send_error

log = logging.getLogger(__name__)

# File descriptors kept free of client connections: log files, model files, URL downloads,
# task callbacks, the event loop's own pipes.
RESERVED_FDS = 64
# Connections refused while every connection is busy, waiting to be told so (503) once their
# request headers arrive; more are closed at once.
MAX_REFUSING = 64
# After SHUTDOWN_GRACE_S, the little time the shutdown may still take: requests cut by the
# deadline send their 503 (at most CUT_REQUESTS_S), jobs cut leave the inference thread,
# threads end. The process is gone by then, whatever still runs.
OVERTIME_S = 1.5
CUT_REQUESTS_S = 0.5


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


# --- Listening sockets and the file-descriptor budget ------------------------------------------


class ListenError(Exception):
    """The server can't listen where it was told to (port in use, no such address)."""


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bind the listening sockets as asyncio's create_server would (`*` or empty: every
    interface, one socket per address family). Raises ListenError naming the address."""
    wildcard = host in ("*", "")
    try:
        infos = socket.getaddrinfo(
            None if wildcard else host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ListenError(f"can't listen on {host}:{port}: {exc.strerror or exc}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # an address family this machine lacks
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if wildcard and family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    sockets.pop().close()  # IPv6 disabled: IPv4 alone
                    continue
                shown = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
                reason = (exc.strerror or str(exc)).lower()
                raise ListenError(f"can't listen on {shown}:{port}: {reason}") from None
            sock.listen(socket.SOMAXCONN)  # the port is ours from now on
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise ListenError(f"can't listen on {host}:{port}: no usable address")
    return sockets


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def listen_backlog(fd_limit: int) -> int:
    """asyncio accepts up to `backlog` connections in one go, before any of them is counted, so
    the backlog also sizes the file descriptors kept free for such a burst."""
    return max(64, min(2048, fd_limit // 8))


def connection_cap(wanted: int, fd_limit: int) -> int:
    """MAX_CONNECTIONS, lowered if the open-files limit can't hold that many connections plus
    two accept bursts and the server's own files."""
    return max(8, min(wanted, fd_limit - 2 * listen_backlog(fd_limit) - RESERVED_FDS))


# --- Connections -------------------------------------------------------------------------------


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


# --- Shutdown ----------------------------------------------------------------------------------


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


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: ShutdownState):
        super().__init__(config)
        self.shutdown_state = shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die of
        # the signal; asrd finishes its work and exits 0 instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's graceful shutdown, with asrd's deadline: the task worker stops taking
        tasks as soon as this begins (the lifespan watches `shutdown_state`), and requests and
        the running task share one SHUTDOWN_GRACE_S. Requests still running then are cancelled
        and answered 503 (ShutdownMiddleware) before the lifespan ends."""
        state = self.shutdown_state
        state.begin()
        log.info("shutting down: requests in progress and the running task get %g s",
                 state.grace_s)  # fmt: skip
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        connections, tasks = self.server_state.connections, self.server_state.tasks
        # uvicorn has no event for "all connections closed": poll, as it does.
        while (connections or tasks) and not self.force_exit and state.remaining() > 0:
            for connection in list(connections):  # also those accepted just before the close
                if not connection.transport.is_closing():
                    with contextlib.suppress(h11.LocalProtocolError):
                        connection.shutdown()  # idle ones close now, busy ones when answered
            await asyncio.sleep(0.05)
        if tasks:
            log.warning("cancelling %d request(s) still running after SHUTDOWN_GRACE_S",
                        len(tasks))  # fmt: skip
            for task in list(tasks):
                task.cancel()
            await asyncio.wait(list(tasks), timeout=state.overtime(CUT_REQUESTS_S))
        for connection in list(connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        if not self.force_exit:
            await self.lifespan.shutdown()


# --- asrd serve --------------------------------------------------------------------------------


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; return the exit status. Fails fast, with one line
    on stderr, before anything slow starts: a device that isn't there (2), a port that can't
    be had (1)."""
    from .app import create_app
    from .engine import choose_device
    from .logs import setup_logging

    try:
        sockets = bind_sockets(settings.host, settings.port)
    except ListenError as exc:
        print(f"asrd: {exc}", file=sys.stderr)
        return 1
    try:
        choose_device(settings)  # DEVICE=cuda without a usable GPU
    except ConfigError as exc:
        for sock in sockets:
            sock.close()
        print(f"asrd: {exc}", file=sys.stderr)
        return 2

    setup_logging(settings)
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter())
    fd_limit = raise_fd_limit()
    cap = connection_cap(settings.max_connections, fd_limit)
    if cap < settings.max_connections:
        log.warning("MAX_CONNECTIONS lowered from %d to %d: the open-files limit is %d",
                    settings.max_connections, cap, fd_limit)  # fmt: skip

    failure: list[str] = []

    def on_load_failure(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    shutdown: ShutdownState = app.state.shutdown
    protocol = type(
        "AsrdH11Protocol",
        (AsrdProtocol,),
        {"table": ConnectionTable(cap), "header_timeout_s": settings.header_timeout_s},
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",  # no WebSocket routes: no upgrades either
        loop="asyncio",
        log_config=None,
        access_log=False,  # asrd's own access log shortens task ids
        lifespan="on",
        # The client address stays the TCP peer: X-Forwarded-For is only believed where asrd
        # decides to (TRUSTED_PROXIES), never rewritten for every request by the server.
        proxy_headers=False,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        # No timeout_graceful_shutdown: Server.shutdown keeps SHUTDOWN_GRACE_S itself.
        backlog=listen_backlog(fd_limit),
    )
    server = Server(config, shutdown)
    addresses = ", ".join(_url(sock) for sock in sockets)
    log.info("listening on %s (at most %d connections)", addresses, cap)
    server.run(sockets=sockets)
    if failure:
        print(f"asrd: the model could not be loaded: {failure[0]}", file=sys.stderr)
    return _exit_status(1 if failure else 0, shutdown)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def _exit_status(code: int, shutdown: ShutdownState) -> int:
    """The server has stopped. A thread still working (a model download, a decode, an
    inference cut short by the deadline) would hold the interpreter's exit, which joins
    non-daemon threads, or crash it (asrd's inference thread is a daemon, and one inside
    CTranslate2 while the interpreter finalizes dies of a segfault): give them a moment to
    end, then leave without them. Other daemon threads (idle library monitors) don't count."""
    deadline = time.monotonic() + shutdown.overtime(1.0)
    me = threading.current_thread()

    def holding() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread is not me
                and (not thread.daemon or thread.name.startswith("asrd-"))]  # fmt: skip

    for thread in holding():
        thread.join(max(0.0, deadline - time.monotonic()))
    running = holding()
    if not running:
        return code
    log.info("exiting with work still running in %s", ", ".join(t.name for t in running))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
