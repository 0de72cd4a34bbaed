"""Operations: Prometheus metrics, the in-flight request limit, CORS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, encode, long_english_audio, metric

JFK = CLIPS["en_jfk_inaugural_1961.flac"]


def test_metrics_count_requests_audio_and_batches(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    assert client.post("/asr", content=JFK.read()).status_code == 200
    assert client.post("/asr", content=b"junk").status_code == 400
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    ok = 'asrd_requests_total{method="POST",route="/asr",status="200"}'
    assert metric(after, ok) >= 1
    assert metric(after, 'asrd_requests_total{method="POST",route="/asr",status="400"}') >= 1
    assert metric(after, "asrd_audio_seconds_total") - metric(
        before, "asrd_audio_seconds_total"
    ) == (pytest.approx(11.0))
    assert metric(after, "asrd_batch_windows_count") > metric(before, "asrd_batch_windows_count")
    assert metric(after, "asrd_realtime_factor_count") >= 1
    assert metric(after, "asrd_model_loaded") == 1
    assert metric(after, "asrd_task_queue_depth") == 0
    assert 'route="/asr"' in after and "asrd_request_duration_seconds_bucket" in after


def test_requests_beyond_the_limit_get_503_at_once(tmp_path: Path) -> None:
    server = AsrdServer({**SERVER_ENV, "MAX_CONCURRENT_REQUESTS": "2"}, tmp_path / "asrd.log")
    samples, _ = long_english_audio(repeats=1)
    body = encode(samples, "flac")
    try:
        server.wait_ready()
        results: list[int] = []

        def busy() -> None:
            results.append(httpx.post(f"{server.url}/asr", content=body, timeout=120).status_code)

        workers = [threading.Thread(target=busy) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        started = time.monotonic()
        refused = httpx.post(f"{server.url}/asr", content=JFK.read(), timeout=30)
        openai = httpx.post(
            f"{server.url}/v1/audio/transcriptions", files={"file": ("a.flac", JFK.read())}
        )
        assert time.monotonic() - started < 1
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert refused.json()["error"]["code"] == "server_busy"
        assert openai.status_code == 503 and openai.json()["error"]["type"] == "server_error"
        assert httpx.get(f"{server.url}/hc").status_code == 200  # never limited
        for worker in workers:
            worker.join()
        assert results == [200, 200]
        assert metric(httpx.get(f"{server.url}/metrics").text, "asrd_requests_rejected_total") == 2
    finally:
        server.stop()


def test_cors_only_for_listed_origins(tmp_path: Path, server: AsrdServer) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    off = httpx.options(f"{server.url}/asr", headers=preflight)  # CORS off by default
    assert "access-control-allow-origin" not in off.headers
    env = {**SERVER_ENV, "CORS_ORIGINS": "https://app.example"}
    cors = AsrdServer(env, tmp_path / "asrd.log")
    try:
        cors.wait_ready()
        allowed = httpx.options(f"{cors.url}/asr", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(
            f"{cors.url}/asr", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        cors.stop()
