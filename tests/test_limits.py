"""Limits on every request path: form shapes, the per-request deadline (REQUEST_TIMEOUT_S),
and work cancelled when its client goes away. Real servers, real model, real sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, assert_error, encode, long_english_audio, metric

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
IN_PROGRESS = "asrd_transcriptions_in_progress"


@pytest.fixture(scope="module")
def long_audio() -> bytes:
    """About 370 s of speech: at least 13 windows of 30 s, over 8 s of work for tiny.en on
    2 cores. A cancelled job stops at the end of the batch it is in, so the tests check how
    many windows were decoded, not only how soon the model was free again."""
    samples, _ = long_english_audio(repeats=3)
    return encode(samples, "flac")


def wait_until_idle(url: str, within_s: float) -> float:
    """Seconds until no transcription is left in the scheduler; fails after `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if metric(httpx.get(f"{url}/metrics").text, IN_PROGRESS) == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"transcriptions still in progress after {within_s} s")


def windows_decoded(url: str) -> float:
    """Windows the server has decoded so far, in all its batches."""
    return metric(httpx.get(f"{url}/metrics").text, "asrd_batch_windows_sum")


# --- form shapes ----------------------------------------------------------------------------


def openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def test_form_field_over_64_kb_is_refused(client: httpx.Client) -> None:
    files = {"file": ("jfk.flac", JFK.read())}
    huge = client.post("/v1/audio/transcriptions", files=files, data={"prompt": "x" * 70_000})
    assert "maximum size" in openai_error(huge, 400)["message"]
    long_prompt = client.post("/v1/audio/transcriptions", files=files, data={"prompt": "x" * 5000})
    assert openai_error(long_prompt, 400)["param"] == "prompt"


def test_too_many_fields_or_files_are_refused(client: httpx.Client) -> None:
    audio = JFK.read()
    fields = {f"field{i}": "1" for i in range(40)}
    many_fields = client.post("/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                              data=fields)  # fmt: skip
    assert "fields" in openai_error(many_fields, 400)["message"].lower()
    two_files = [("file", ("a.flac", audio)), ("other", ("b.flac", audio))]
    assert (
        "files"
        in openai_error(client.post("/v1/audio/transcriptions", files=two_files), 400)[
            "message"
        ].lower()
    )
    assert_error(client.post("/api/v1/transcribe", files=two_files), 400)
    assert_error(client.post("/asr", files=two_files), 400)
    assert_error(client.post("/asr", files={"file": ("a.flac", audio)}, data=fields), 400)


# --- the upload limit, to the byte -----------------------------------------------------------

LIMIT = 8 * 1024 * 1024  # MAX_UPLOAD_MB=8 in SERVER_ENV


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]


def test_uploads_over_the_limit_by_one_byte_get_413(client: httpx.Client) -> None:
    over, at = b"\0" * (LIMIT + 1), b"\0" * LIMIT
    assert_error(client.post("/asr", content=over), 413, "too_large")
    assert_error(client.post("/asr", content=chunks(over)), 413, "too_large")  # no length
    assert_error(client.post("/asr", content=at), 400, "invalid_audio")  # at the limit: read
    files = {"file": ("zeros.wav", over)}
    assert_error(client.post("/asr", files=files), 413, "too_large")
    assert_error(client.post("/api/v1/transcribe", files=files), 413, "too_large")
    refused = client.post("/v1/audio/transcriptions", files=files)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_large"
    at_limit = client.post("/v1/audio/transcriptions", files={"file": ("zeros.wav", at)})
    assert at_limit.status_code == 400


# --- the request deadline -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hurried_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("hurried") / "asrd.log"
    # Batches of 2 windows (~2 s here): a cancelled job leaves the model soon.
    env = {**SERVER_ENV, "REQUEST_TIMEOUT_S": "1.5", "BATCH_SIZE": "2"}
    with AsrdServer(env, log_path) as instance:
        yield instance


def test_request_past_the_deadline_gets_504_and_its_work_stops(
    hurried_server: AsrdServer, long_audio: bytes
) -> None:
    before = windows_decoded(hurried_server.url)
    started = time.monotonic()
    response = httpx.post(f"{hurried_server.url}/asr", content=long_audio, timeout=60)
    elapsed = time.monotonic() - started
    error = assert_error(response, 504, "request_timeout")
    assert "REQUEST_TIMEOUT_S" in error["message"] and elapsed < 4
    wait_until_idle(hurried_server.url, within_s=15)
    assert windows_decoded(hurried_server.url) - before <= 4  # of 13 or more
    # A short request still fits in the deadline.
    assert (
        httpx.post(f"{hurried_server.url}/asr", content=JFK.read(), timeout=30).status_code == 200
    )


def test_slow_upload_gets_504(hurried_server: AsrdServer) -> None:
    with socket.create_connection(("127.0.0.1", hurried_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Type: audio/flac\r\n"
            b"Content-Length: 100000\r\n\r\n" + JFK.read()[:1000]
        )  # and then nothing more
        started = time.monotonic()
        answer = b""
        while b"request_timeout" not in answer and (piece := sock.recv(4096)):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 504") and b"request_timeout" in answer
    assert time.monotonic() - started < 4


def test_stream_past_the_deadline_ends_with_an_error_event(
    hurried_server: AsrdServer, long_audio: bytes
) -> None:
    events = []
    with httpx.stream(
        "POST",
        f"{hurried_server.url}/v1/audio/transcriptions",
        files={"file": ("long.flac", long_audio)},
        data={"stream": "true"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events[-1]["error"]["code"] == "request_timeout"
    assert all(event.get("type") == "transcript.text.delta" for event in events[:-1])
    wait_until_idle(hurried_server.url, within_s=15)


# --- clients that leave ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/asr", "/v1/audio/transcriptions"])
def test_work_stops_when_the_client_leaves(
    server: AsrdServer, long_audio: bytes, route: str
) -> None:
    if route == "/asr":
        request = httpx.Request("POST", f"{server.url}{route}", content=long_audio)
    else:
        request = httpx.Request(
            "POST", f"{server.url}{route}", files={"file": ("long.flac", long_audio)}
        )
    before = windows_decoded(server.url)
    head = f"POST {route} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items() if name != "host"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + request.read())
        deadline = time.monotonic() + 10
        while metric(httpx.get(f"{server.url}/metrics").text, IN_PROGRESS) == 0:
            assert time.monotonic() < deadline, "the transcription never started"
            time.sleep(0.05)
        time.sleep(0.5)
    # Transcribing it all takes ~9 s here, in batches of up to ~5.5 s (6 windows, the CPU
    # default): a dropped client frees the model after the batch it is in.
    wait_until_idle(server.url, within_s=15)
    assert windows_decoded(server.url) - before <= 6  # of 13 or more
    log = server.log()
    assert f"POST {route}: the client went away" in log
    assert f"POST {route} 499" in log


def test_limits_are_documented() -> None:
    page = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    section = page.split("## Privacy", 1)[0]
    variables = [
        "MAX_DECODED_AUDIO_MB",
        "MAX_UPLOADS_IN_MEMORY_MB",
        "MAX_DECODE_CPU_S",
        "MAX_CONNECTIONS",
        "HEADER_TIMEOUT_S",
        "KEEP_ALIVE_S",
        "MIN_UPLOAD_KB_S",
        "MAX_STORED_RESULTS",
        "MAX_UPLOAD_MB",
        "MAX_AUDIO_S",
        "MAX_CONCURRENT_REQUESTS",
        "REQUEST_TIMEOUT_S",
        "MAX_TASK_QUEUE_SIZE",
        "MAX_QUEUE_MB",
        "URL_CONNECT_TIMEOUT_S",
        "URL_READ_TIMEOUT_S",
        "URL_TOTAL_TIMEOUT_S",
        "API_KEYS",
        "PROTECT_HEALTH",
        "PROTECT_METRICS",
        "ADMIN_API_KEYS",
        "AUTHORIZED_MAILS",
        "TRUSTED_PROXIES",
        "ALLOW_PRIVATE_URLS",
        "LOCAL_FILE_DIRS",
        "CORS_ORIGINS",
        "SHUTDOWN_GRACE_S",
    ]
    assert [name for name in variables if f"`{name}`" not in section] == []
