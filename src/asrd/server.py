"""How asrd serves HTTP: its own listening sockets (bound before anything slow starts), uvicorn
with a hardened h11 protocol (request-header timeout, a connection cap that closes idle
connections first), and a graceful shutdown with one deadline for requests and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn

from .config import ConfigError, Settings
from .connections import AcceptErrorFilter, AsrdProtocol, AsrdWebSocketProtocol, ConnectionTable
from .shutdown import CUT_REQUESTS_S, ShutdownState

log = logging.getLogger(__name__)

# File descriptors kept free of client connections: log files, model files, URL downloads,
# task callbacks, the event loop's own pipes.
RESERVED_FDS = 64


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


# --- Shutdown ----------------------------------------------------------------------------------


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
    from .devices import choose_device
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
        # Live sessions (`/v1/realtime`): one message at a time is read (reading pauses until
        # the app takes it), none over REALTIME_MAX_MESSAGE_MB, no compression (no inflating
        # bombs, no CPU spent on audio that doesn't compress); pings find vanished clients.
        ws=AsrdWebSocketProtocol,
        ws_max_size=settings.realtime_max_message_bytes + 1024,
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
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
