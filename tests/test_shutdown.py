"""Graceful shutdown: SIGTERM lets requests in progress and the running task finish within
SHUTDOWN_GRACE_S, cuts what is left with a JSON 503, fails waiting tasks, and exits 0."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from asrd.logs import short_id

from conftest import SERVER_ENV, AsrdServer, encode, long_english_audio, wer


def test_sigterm_during_a_transcription(tmp_path: Path) -> None:
    samples, transcript = long_english_audio(repeats=1)  # ~77 s of speech: ~2 s of work
    body = encode(samples, "flac")
    server = AsrdServer({**SERVER_ENV, "SHUTDOWN_GRACE_S": "60"}, tmp_path / "asrd.log")
    server.wait_ready()
    result: dict = {}

    def transcribe() -> None:
        result["response"] = httpx.post(f"{server.url}/asr", content=body, timeout=120)

    worker = threading.Thread(target=transcribe)
    worker.start()
    time.sleep(0.7)  # the request is in progress
    server.process.send_signal(signal.SIGTERM)
    worker.join(120)
    assert server.process.wait(60) == 0, server.log()
    response = result["response"]
    assert response.status_code == 200
    assert wer(transcript, response.json()["text"]) <= 0.25
    server.stop()


def raw_request(server: AsrdServer, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_requests_cut_by_the_deadline_get_json_503(tmp_path: Path) -> None:
    """Two uploads that never end (MIN_UPLOAD_KB_S=0) and a long streamed transcription:
    SIGTERM, SHUTDOWN_GRACE_S=2, then the uploads are answered 503 `shutting_down` in their
    route's error shape, the stream ends with that error event, and the process exits 0."""
    samples, _ = long_english_audio(repeats=3)
    long_audio = encode(samples, "flac")
    env = {**SERVER_ENV, "SHUTDOWN_GRACE_S": "2", "MIN_UPLOAD_KB_S": "0"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        asr = raw_request(server, "POST /asr HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\nR")
        openai = raw_request(
            server,
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n",
        )
        events: list[str] = []

        def stream() -> None:  # a long streamed transcription: its stream has begun
            files = {"file": ("long.flac", long_audio)}
            data = {"stream": "true", "model": "whisper-1"}
            with httpx.stream("POST", f"{server.url}/v1/audio/transcriptions", files=files,
                              data=data, timeout=30) as response:  # fmt: skip
                events.extend(line for line in response.iter_lines() if line)

        streaming = threading.Thread(target=stream)
        streaming.start()
        deadline = time.monotonic() + 20
        while "transcript.text.delta" not in str(events) and time.monotonic() < deadline:
            time.sleep(0.05)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for sock, shape in ((asr, {"code", "message"}),
                            (openai, {"message", "type", "param", "code"})):  # fmt: skip
            status, headers, body = read_response(sock)
            assert status == 503 and headers["content-type"] == "application/json"
            assert headers["connection"] == "close"
            assert set(body["error"]) == shape and body["error"]["code"] == "shutting_down"
            sock.close()
        answered = time.monotonic() - signalled
        streaming.join(10)
        last = json.loads(events[-1].removeprefix("data: "))
        assert last["error"]["code"] == "shutting_down" and last["error"]["type"] == "server_error"
        assert server.process.wait(10) == 0
        exited = time.monotonic() - signalled
        assert 1.8 < answered < 3.0 and exited < 2 + 2, (answered, exited)
        log = server.log()
        assert "POST /asr 503" in log and "POST /v1/audio/transcriptions 503" in log
        assert "Traceback" not in log and "Exception in ASGI application" not in log
        print(f"cut requests answered {answered:.2f} s, exit {exited:.2f} s after SIGTERM")
    finally:
        server.stop()


def test_queued_tasks_fail_at_shutdown(tmp_path: Path) -> None:
    """SIGTERM while a long task runs and two wait: no task starts after it, the waiting ones
    fail at once (`shutting_down`, logged), the running one is cut at SHUTDOWN_GRACE_S."""
    samples, _ = long_english_audio(repeats=3)  # several seconds of work on 2 cores
    body = encode(samples, "flac")
    env = {**SERVER_ENV, "SHUTDOWN_GRACE_S": "2"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            ids = [
                http.post("/api/v1/transcribe", files={"file": ("a.flac", body)}).json()["task_id"]
                for _ in range(3)
            ]
            deadline = time.monotonic() + 30
            while http.get(f"/api/v1/tasks/{ids[0]}").json()["status"] != "processing":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(0.5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
        exited = time.monotonic() - signalled
        assert exited < 2 + 2, exited
        log = server.log()
        running, *waiting = (short_id(task_id) for task_id in ids)
        assert f"task {running}: failed (shutting_down: the server shut down while it ran)" in log
        for task_id in waiting:
            assert f"task {task_id}: failed (shutting_down: the server shut down before" in log
            assert f"task {task_id}: started" not in log
        assert "Traceback" not in log
        print(f"exit {exited:.2f} s after SIGTERM with a task running and two waiting")
    finally:
        server.stop()
