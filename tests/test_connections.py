"""Connections: the cap that closes idle connections first, the request-header timeout, slow
bodies, small JSON bodies and accept errors. Raw sockets against a real `asrd serve`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import resource
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, UploadFile
from starlette.types import ASGIApp, Message

from asrd.connections import AcceptErrorFilter
from asrd.errors import install_error_handlers
from asrd.limits import UploadRateMiddleware
from asrd.server import connection_cap

from conftest import CLIPS, SERVER_ENV, AsrdServer, assert_error, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]


def connect(server: AsrdServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def json_error(raw: bytes, status: int, code: str) -> dict:
    got, headers, body = parse(raw)
    assert got == status, raw
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    return error


def is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


@pytest.fixture
def many_sockets() -> Iterator[list[socket.socket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def health_latency(server: AsrdServer) -> float:
    started = time.perf_counter()
    response = httpx.get(f"{server.url}/hc", timeout=5)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_idle_connections_make_room_for_health_checks(
    tmp_path: Path, many_sockets: list[socket.socket]
) -> None:
    env = {**SERVER_ENV, "MAX_CONNECTIONS": "200"}
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        for _ in range(1500):
            many_sockets.append(connect(server))
        latency = health_latency(server)
        assert latency < 1.0, latency
        time.sleep(0.5)
        closed = sum(is_closed(sock) for sock in many_sockets)
        assert 1500 - 200 <= closed <= 1500 - 190, closed  # the newest 200 or so stay open
        assert all(not is_closed(sock) for sock in many_sockets[-150:])
        # The log says so once, not once per connection.
        assert server.log().count("MAX_CONNECTIONS (200) reached") == 1
    print(f"/hc with 1500 idle sockets against MAX_CONNECTIONS=200: {latency * 1000:.0f} ms")


def test_header_timeout(tmp_path: Path) -> None:
    env = {**SERVER_ENV, "HEADER_TIMEOUT_S": "1"}
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        silent, partial, dribbling, kept = (connect(server) for _ in range(4))
        opened = time.monotonic()
        partial.sendall(b"GET /hc HTTP/1.1\r\nHo")
        kept.sendall(b"GET /hc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse(kept.recv(65536))[0] == 200
        answered = time.monotonic()
        kept.sendall(b"GET /hc HT")
        # Headers sent one byte at a time still have to be complete in time.
        with contextlib.suppress(OSError):  # until the server closes it
            for byte in b"GET /hc HTTP/1.1\r\nHost: x\r\n":
                dribbling.sendall(bytes([byte]))
                time.sleep(0.1)

        assert read_until_closed(silent) == b""  # never sent anything: closed, no answer
        assert 0.9 < time.monotonic() - opened < 2.5
        error = json_error(read_until_closed(partial), 408, "request_timeout")
        assert "HEADER_TIMEOUT_S" in error["message"]
        json_error(read_until_closed(dribbling), 408, "request_timeout")
        json_error(read_until_closed(kept), 408, "request_timeout")
        assert 0.9 < time.monotonic() - answered < 2.5  # counted from the previous response
        assert health_latency(server) < 1.0


def test_when_every_connection_is_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    env = {**SERVER_ENV, "MAX_CONNECTIONS": "8", "MIN_UPLOAD_KB_S": "0"}
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        uploads = [connect(server) for _ in range(8)]
        for sock in uploads:  # each one a request in progress: a body still coming
            sock.sendall(b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nRIFF")
        time.sleep(0.3)
        refused = connect(server)
        refused.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = read_until_closed(refused)
        error = json_error(raw, 503, "too_many_connections")["message"]
        assert "MAX_CONNECTIONS=8" in error
        assert set(json.loads(parse(raw)[2])["error"]) == {"message", "type", "param", "code"}
        assert parse(raw)[1]["retry-after"] == "2"
        uploads.pop().close()  # one request ends: room again
        time.sleep(0.3)
        assert health_latency(server) < 1.0
        for sock in uploads:
            sock.close()


def test_the_cap_stays_below_the_open_files_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, many_sockets: list[socket.socket]
) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    popen = functools.partial(subprocess.Popen, preexec_fn=low_limit)
    monkeypatch.setattr(subprocess, "Popen", popen)  # only for this server's start
    server = AsrdServer(SERVER_ENV, tmp_path / "asrd.log")
    monkeypatch.undo()
    with server:
        cap = connection_cap(1000, 512)  # the soft limit was raised to the hard one
        assert f"MAX_CONNECTIONS lowered from 1000 to {cap}: the open-files limit is 512" in (
            server.log()
        )
        for _ in range(2 * cap):
            many_sockets.append(connect(server))
        assert health_latency(server) < 1.0
        log = server.log()
        assert "Traceback" not in log and "out of system resource" not in log


def test_connection_cap_arithmetic() -> None:
    assert connection_cap(1000, 1_048_576) == 1000
    assert connection_cap(1000, 1024) == 1024 - 2 * 128 - 64
    assert connection_cap(1000, 64) == 8  # never below the smallest MAX_CONNECTIONS


def test_accept_errors_are_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("asyncio")
    accept_filter = AcceptErrorFilter(interval_s=0.3)
    logger.addFilter(accept_filter)
    loop = asyncio.new_event_loop()
    error = OSError(errno.EMFILE, "Too many open files")
    context = {"message": "socket.accept() out of system resource", "exception": error}
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(500):  # what asyncio does on each failed accept
                loop.call_exception_handler(context)
            time.sleep(0.35)
            loop.call_exception_handler(context)
            loop.call_exception_handler({"message": "something else", "exception": error})
    finally:
        loop.close()
        logger.removeFilter(accept_filter)
    lines = [record for record in caplog.records if record.name == "asyncio"]
    assert len(lines) == 3
    assert all(record.exc_info is None for record in lines[:2])
    assert "Too many open files" in lines[0].getMessage()
    assert "held back" not in lines[0].getMessage()
    assert "499 more held back" in lines[1].getMessage()
    assert lines[2].getMessage().startswith("something else")  # other errors untouched


FORM_START = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.flac"\r\n'
    b"Content-Type: audio/flac\r\n\r\n"
)


def multipart_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()


def test_slow_uploads_cannot_hold_the_request_slots(tmp_path: Path) -> None:
    """64 clients sending a byte every 5 s (MAX_CONCURRENT_REQUESTS=64, MIN_UPLOAD_KB_S=8)."""
    with AsrdServer(SERVER_ENV, tmp_path / "asrd.log") as server:
        slow: dict[socket.socket, bytes] = {}
        bodies: dict[socket.socket, Iterator[int]] = {}
        for i in range(64):
            sock = connect(server)
            if i % 2:
                sock.sendall(b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                bodies[sock] = iter(JFK.read())
            else:
                sock.sendall(multipart_head("/v1/audio/transcriptions", 100000))
                bodies[sock] = iter(FORM_START + JFK.read())
            sock.send(bytes([next(bodies[sock])]))
            slow[sock] = b""
        started = time.monotonic()
        time.sleep(0.3)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert_error(http.post("/asr", content=JFK.read()), 503, "server_busy")  # held

            # Keep dribbling until the server answers them all.
            selector = selectors.DefaultSelector()
            for sock in slow:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            finished: dict[socket.socket, float] = {}
            next_byte = started + 5
            while len(finished) < len(slow) and time.monotonic() - started < 25:
                for key, _ in selector.select(timeout=0.2):
                    sock = key.fileobj
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionError:
                        chunk = b""
                    slow[sock] += chunk
                    if not chunk:
                        selector.unregister(sock)
                        finished[sock] = time.monotonic() - started
                if time.monotonic() >= next_byte:
                    next_byte += 5
                    for sock in set(slow) - set(finished):
                        with contextlib.suppress(OSError):
                            sock.send(bytes([next(bodies[sock])]))
            assert len(finished) == len(slow)
            assert all(9 < elapsed < 15 for elapsed in finished.values()), sorted(finished.values())
            for i, (sock, raw) in enumerate(slow.items()):
                error = json_error(raw, 408, "upload_too_slow")
                assert "MIN_UPLOAD_KB_S" in error["message"]
                shape = {"code", "message"} if i % 2 else {"message", "type", "param", "code"}
                assert set(json.loads(parse(raw)[2])["error"]) == shape
                sock.close()

            response = http.post("/asr", content=JFK.read())  # the slots are free again
            assert response.status_code == 200
            assert wer(JFK.transcript, response.json()["text"]) < 0.2
        print(f"64 slow uploads answered 408 after {min(finished.values()):.1f}-"
              f"{max(finished.values()):.1f} s")  # fmt: skip


def test_json_bodies_are_small(client: httpx.Client) -> None:
    big = json.dumps({"url": "https://example.com/a.wav", "pad": "x" * 1_000_000}).encode()
    started = time.perf_counter()
    response = client.post("/asr", content=big, headers={"Content-Type": "application/json"})
    error = assert_error(response, 413, "too_large")
    assert "JSON" in error["message"] and "64 KB" in error["message"]
    assert response.headers["connection"] == "close"
    assert time.perf_counter() - started < 1

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut while it streams
        for start in range(0, len(big), 16384):
            yield big[start : start + 16384]

    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        headers = {"Content-Type": content_type}
        response = client.post("/asr", content=chunks(), headers=headers)
        assert_error(response, 413, "too_large")
    started = time.perf_counter()
    assert client.get("/hc").status_code == 200
    assert time.perf_counter() - started < 0.5
    # A small JSON body is still read.
    response = client.post("/asr", json={"url": "ftp://example.com/a.wav"})
    assert response.status_code == 400


# --- the upload-rate rules, on the middleware alone (small time limits) ----------------------


def body_app() -> FastAPI:
    """A FastAPI app with a raw-body route and a form route, behind the upload-rate limit."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/asr")
    async def raw(request: Request) -> dict:
        return {"size": len(await request.body())}

    @app.post("/v1/audio/transcriptions")
    async def form(file: UploadFile) -> dict:
        return {"size": len(await file.read())}

    return app


async def call(
    app: ASGIApp, path: str, chunks: list[tuple[float, bytes]], content_type: str
) -> tuple[int, dict, float]:
    """Send `chunks` (delay before each, bytes) as the body; return status, JSON, seconds."""
    pending = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        if not pending:
            await asyncio.sleep(3600)  # the body is in: nothing more until a disconnect
        delay, data = pending.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": data, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type.encode())]
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "root_path": "",
             "server": ("t", 80), "client": ("c", 1)}  # fmt: skip
    started = time.monotonic()
    await app(scope, receive, send)
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    if sent[0]["status"] >= 400:
        assert dict(sent[0]["headers"])[b"connection"] == b"close"
    return sent[0]["status"], body, time.monotonic() - started


def limited(min_rate: float) -> UploadRateMiddleware:
    return UploadRateMiddleware(body_app(), min_bytes_per_s=min_rate, grace_s=0.3, idle_s=0.5)


def test_upload_rate_rules() -> None:
    async def main() -> None:
        fast = [(0.05, b"x" * 1000)] * 10
        assert (await call(limited(1000), "/asr", fast, "audio/wav"))[0] == 200
        # Below the average rate once the grace is over: cut at that moment.
        slow = [(0.1, b"x")] * 20
        status, body, elapsed = await call(limited(1000), "/asr", slow, "audio/wav")
        assert status == 408 and body["error"]["code"] == "upload_too_slow"
        assert "MIN_UPLOAD_KB_S" in body["error"]["message"] and 0.3 <= elapsed < 0.5
        # Rate 0 (no minimum): a slow body goes through, a silent one is cut at the idle limit.
        assert (await call(limited(0), "/asr", slow, "audio/wav"))[0] == 200
        silent = [(0.05, b"x"), (5, b"x")]
        status, body, elapsed = await call(limited(0), "/asr", silent, "audio/wav")
        assert status == 408 and "sent nothing for 0.5 s" in body["error"]["message"]
        assert 0.5 <= elapsed < 0.7
        # A form: FastAPI would answer "400 error parsing the body"; the client learns why.
        form = [(0.05, b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\""),
                (5, b"x")]  # fmt: skip
        status, body, _ = await call(limited(0), "/v1/audio/transcriptions", form,
                                     "multipart/form-data; boundary=b")  # fmt: skip
        assert status == 408 and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "upload_too_slow"

    asyncio.run(main())
