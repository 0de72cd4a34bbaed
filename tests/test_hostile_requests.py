"""Requests written to hurt: clients that hang up mid-upload, paths that try to forge log lines,
made-up methods that would grow /metrics, server paths no file can have. Each one gets a clean
answer (or none, for a client that left), one log line and a bounded metric, never a 500."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from asrd.config import load_settings
from asrd.logs import setup_logging

from conftest import AsrdServer, assert_error


def raw_request(server: AsrdServer, head: str, body: bytes = b"", *, answer: bool = True) -> bytes:
    """Send `head` (request line and headers, without the blank line) and `body` over a raw
    socket; return what the server answers, or hang up at once when `answer` is false."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        if not answer:
            time.sleep(0.2)  # the server is reading the body by now
            return b""
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def log_since(server: AsrdServer, offset: int, until: str, timeout: float = 10) -> str:
    """The server's log written after `offset`, once it contains `until`."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log()[offset:]
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# --- clients that hang up during the upload -----------------------------------------------------

BOUNDARY = "hangup-boundary"
FORM_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode()


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/asr", "application/octet-stream", b"\0" * 1000),  # the route reads the body itself
        ("/asr", f"multipart/form-data; boundary={BOUNDARY}", FORM_HEAD + b"\0" * 1000),
        # FastAPI parses these forms, and turns a hang-up into a 400 of its own
        ("/api/v1/transcribe", f"multipart/form-data; boundary={BOUNDARY}",
         FORM_HEAD + b"\0" * 1000),
        ("/v1/audio/transcriptions", f"multipart/form-data; boundary={BOUNDARY}",
         FORM_HEAD + b"\0" * 1000),
    ],
)  # fmt: skip
def test_hang_up_during_the_upload_is_a_quiet_499(
    server: AsrdServer, path: str, content_type: str, body: bytes
) -> None:
    offset = len(server.log())
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
    raw_request(server, head + "Content-Length: 1000000", body, answer=False)
    access = f"POST {path} 499 "
    text = log_since(server, offset, access)
    assert access in text, text
    assert "Traceback" not in text and " ERROR " not in text, text
    assert f"POST {path} 500 " not in text and f"POST {path} 400 " not in text, text
    assert "the client closed the connection" in text
    assert httpx.get(f"{server.url}/hc").status_code == 200  # and the server is fine


# --- log lines can't be forged --------------------------------------------------------------


def test_a_path_with_newlines_cannot_forge_a_log_line(server: AsrdServer) -> None:
    offset = len(server.log())
    forged = "2026-01-01%20INFO%20forged"
    targets = [
        f"/asr%0a{forged}",
        f"/asr%0d%0a{forged}%1b[31m",
        f"/api/v1/tasks/x%0A{forged}",
        f"/asr?language=en%0a{forged}",
        f"/%E2%80%A8{forged}",  # U+2028, a line separator to some readers
    ]
    for target in targets:
        answer = raw_request(server, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close")
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
    text = log_since(server, offset, f"GET /%E2%80%A8{forged} ")
    lines = text.splitlines()
    assert not [line for line in lines if "forged" in line and not re.match(r"\d{4}-", line)]
    assert not [line for line in lines if line.startswith("2026-01-01 INFO forged")]
    assert "\x1b" not in text and "\u2028" not in text
    for target in targets:  # logged as sent: percent-encoded, on the access line
        assert f"GET {target} 4" in text, (target, text)


def test_every_log_message_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The formatter escapes control characters in any message, from any logger; tracebacks
    stay multi-line."""
    monkeypatch.setenv("LOG_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_FORMAT", "{levelname} {name}: {message}")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(load_settings())
        log = logging.getLogger("asrd.test")
        log.warning("path %s", "/a\nINFO forged\r\x1b[2J\u2028\u202eend")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed on %s", "/b\nINFO forged")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = (tmp_path / "asrd.log").read_text().splitlines()
    assert lines[0] == r"WARNING asrd.test: path /a\nINFO forged\r\x1b[2J\u2028\u202eend"
    assert lines[1] == r"ERROR asrd.test: failed on /b\nINFO forged"
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"
    assert not any(line.startswith("INFO forged") for line in lines)


# --- metrics labels are bounded -------------------------------------------------------------


def test_made_up_methods_and_paths_do_not_grow_metrics(client: httpx.Client) -> None:
    def noise(i: int) -> None:
        assert client.request(f"X{i}", "/asr").status_code == 405
        assert client.request(f"FOO{i}", f"/made-up-{i}").status_code == 404
        assert client.get(f"/nothing/{i}?q={i}").status_code == 404

    noise(0)  # the first of each kind adds its label set once, and so does /metrics
    client.get("/metrics")
    before = client.get("/metrics").text.splitlines()
    for i in range(1, 301):
        noise(i)
    after = client.get("/metrics").text
    samples = [line for line in after.splitlines() if not line.startswith("#")]
    assert len(after.splitlines()) == len(before), "label values grew with the requests"
    assert 'method="other",route="/asr",status="405"' in after
    assert 'method="other",route="unmatched",status="404"' in after
    assert 'method="GET",route="unmatched",status="404"' in after
    assert not [line for line in samples if re.search(r'method="(X|FOO)\d|made-up|nothing', line)]


# --- server paths no file can have ----------------------------------------------------------


def test_server_paths_that_are_no_file(client: httpx.Client, allowed_dir: Path) -> None:
    def post(path: str) -> httpx.Response:
        # json.dumps keeps a lone surrogate as `\ud800`, which httpx's own encoder refuses.
        body = json.dumps({"url": path})
        return client.post("/asr", content=body, headers={"Content-Type": "application/json"})

    assert_error(post(f"{allowed_dir}/jfk\0.flac"), 400, "invalid_url")
    assert_error(post(f"{allowed_dir}/\ud800.flac"), 422, "invalid_request")  # not a string
    assert_error(post(f"{allowed_dir}/{'x' * 5000}.flac"), 400, "invalid_url")
    for directory in (
        str(allowed_dir),
        f"{allowed_dir}/",
        f"{allowed_dir}/.",
        f"file://{allowed_dir}",
    ):
        assert_error(post(directory), 400, "not_a_file")
    assert_error(post(f"{allowed_dir}/jfk.flac/inside"), 404, "file_not_found")
