"""Graceful shutdown: SIGTERM lets the running transcription finish, then exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

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
