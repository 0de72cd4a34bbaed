"""Operations: Prometheus metrics, the in-flight request limit, overload, CORS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, encode, long_english_audio, metric, wer

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
    # Where the time went (the profile's source): the encoder, the decoder, VAD, decoding.
    for stage in ("encode", "decode", "features", "check"):
        seconds = f'asrd_engine_seconds_total{{model="tiny.en",stage="{stage}"}}'
        assert metric(after, seconds) > 0, stage
    for stage in ("decode", "vad"):
        assert metric(after, f'asrd_audio_processing_seconds_total{{stage="{stage}"}}') > 0


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


VARIANTS = ("transcoded", "_8k", "_44k", "law", "_16k")
SHORT = [
    clip
    for clip in CLIPS.values()
    if clip.language == "en"
    and 2 <= clip.duration <= 12
    and not any(v in clip.name for v in VARIANTS)
]


def test_overload_refuses_the_excess_at_once_and_serves_the_rest(tmp_path: Path) -> None:
    """More clients than MAX_CONCURRENT_REQUESTS while the task queue is full: the excess
    get 503 / 429 at once, every accepted request gets its right words, /hc stays fast."""
    env = {**SERVER_ENV, "MAX_CONCURRENT_REQUESTS": "4", "MAX_TASK_QUEUE_SIZE": "3"}
    samples, _ = long_english_audio(repeats=1)
    long_task = encode(samples, "flac")
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        health: list[float] = []
        stop = threading.Event()

        def watch_health() -> None:
            while not stop.is_set():
                started = time.monotonic()
                assert httpx.get(f"{server.url}/hc", timeout=5).status_code == 200
                health.append(time.monotonic() - started)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        http = httpx.Client(base_url=server.url, timeout=120)
        # The worker takes the long task, three more fill the queue, the rest are refused.
        accepted = [http.post("/api/v1/transcribe", files={"file": ("long.flac", long_task)})]
        while http.get(f"/api/v1/tasks/{accepted[0].json()['task_id']}").json()["status"] != (
            "processing"
        ):
            time.sleep(0.05)
        for clip in SHORT[:3]:
            accepted.append(
                http.post("/api/v1/transcribe", files={"file": (clip.name, clip.read())})
            )
        assert [r.status_code for r in accepted] == [200] * 4  # the seed's code
        for clip in SHORT[3:5]:
            started = time.monotonic()
            refused = http.post("/api/v1/transcribe", files={"file": (clip.name, clip.read())})
            assert refused.status_code == 429 and time.monotonic() - started < 2

        # Meanwhile 12 sync clients at once, 4 allowed in.
        results: list[tuple[int, float, str, object]] = []

        def sync_client(index: int) -> None:
            clip = SHORT[index % len(SHORT)]
            started = time.monotonic()
            if index % 2:
                response = httpx.post(f"{server.url}/asr", content=clip.read(), timeout=120)
            else:
                response = httpx.post(f"{server.url}/v1/audio/transcriptions", timeout=120,
                                      files={"file": (clip.name, clip.read())})  # fmt: skip
            results.append((response.status_code, time.monotonic() - started, clip.transcript,
                            response.json()))  # fmt: skip

        clients = [threading.Thread(target=sync_client, args=(i,)) for i in range(12)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()

        served = [r for r in results if r[0] == 200]
        refused_sync = [r for r in results if r[0] != 200]
        assert len(served) >= 4 and len(served) + len(refused_sync) == 12
        for _, _, transcript, body in served:
            assert wer(transcript, body["text"]) <= 0.3  # type: ignore[index]
        for status, elapsed, _, body in refused_sync:
            assert status == 503 and elapsed < 2, (status, elapsed)  # at once, on a busy CPU
            assert body["error"]["code"] == "server_busy"  # type: ignore[index]
        for response, clip_text in zip(accepted[1:], SHORT[:3], strict=True):
            task_id = response.json()["task_id"]
            while (task := http.get(f"/api/v1/tasks/{task_id}").json())["status"] in (
                "pending", "processing"
            ):  # fmt: skip
                time.sleep(0.1)
            assert task["status"] == "finished"
            assert wer(clip_text.transcript, task["result"]["text"]) <= 0.3
        stop.set()
        watcher.join()
        http.close()
        assert len(health) > 10 and max(health) < 0.5, max(health)
