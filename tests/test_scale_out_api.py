"""API replicas (ROLE=api) on one real `redis-server`, in-process with a fake model (no
model is loaded: an API replica needs none): what a replica answers from the shared queue,
the cluster-wide bounds, and Redis going away and coming back. The real processes, workers and
real speech are in tests/test_scale_out.py."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np
import pytest
from fastapi.testclient import TestClient

from asrd.transcript import Segment, TranscribeOptions

from conftest import CLIPS, assert_error, metric
from fakes import FakeRegistry, FakeSlot, canned, fake_server
from redis_server import RedisServer

CLIP = CLIPS["en_timit_LDC93S1.wav"].read()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API replicas sharing a fresh namespace; no worker takes their tasks."""
    settings = dict(
        role="api", queue_backend="redis", redis_url=redis_server.url,
        redis_prefix=f"t{secrets.token_hex(4)}", max_task_queue_size=3,
    )  # fmt: skip
    with ExitStack() as stack:
        first = stack.enter_context(
            fake_server(FakeSlot("tiny.en", multilingual=False), **settings)
        )
        second = stack.enter_context(
            fake_server(FakeSlot("tiny.en", multilingual=False), **settings)
        )
        yield first, second


def submit(client: TestClient) -> dict:
    response = client.post("/api/v1/tasks", files={"file": ("a.wav", CLIP)})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_task_is_seen_and_cancelled_from_any_replica(
    replicas: tuple[TestClient, TestClient],
) -> None:
    first, second = replicas
    a, b = submit(first), submit(second)
    assert (a["position_in_queue"], b["position_in_queue"]) == (1, 2)
    seen = second.get(f"/api/v1/tasks/{a['task_id']}").json()
    assert seen["status"] == "pending" and seen["position_in_queue"] == 1
    assert first.get("/api/v1/status", params={"task_id": b["task_id"]}).json()["task_id"]
    assert second.delete(f"/api/v1/tasks/{a['task_id']}").json()["status"] == "cancelled"
    assert_error(first.get(f"/api/v1/tasks/{a['task_id']}"), 404, "task_not_found")
    assert first.get(f"/api/v1/tasks/{b['task_id']}").json()["position_in_queue"] == 1
    assert_error(first.get(f"/api/v1/tasks/{b['task_id']}/srt"), 409, "task_not_finished")
    status = second.get("/api/v1/decoder_status").json()
    assert status["tasks_in_queue"] == 1 and status["workers"] == []


def test_the_queue_bound_holds_across_replicas(replicas: tuple[TestClient, TestClient]) -> None:
    first, second = replicas
    submit(first)
    submit(second)
    submit(first)
    error = assert_error(
        second.post("/api/v1/tasks", files={"file": ("a.wav", CLIP)}), 429, "queue_full"
    )
    assert "3 tasks" in error["message"]
    assert_error(first.post("/api/v1/transcribe", files={"file": ("a.wav", CLIP)}), 429)


def test_cluster_metrics(replicas: tuple[TestClient, TestClient]) -> None:
    first, second = replicas
    submit(first)
    submit(second)
    # The gauges are refreshed every ANNOUNCE_S; the test waits for the next refresh.
    for _ in range(60):
        text = first.get("/metrics").text
        if metric(text, "asrd_queue_depth") == 2:
            break
        time.sleep(0.1)
    assert metric(text, "asrd_queue_depth") == 2
    assert metric(text, "asrd_task_queue_depth") == 2
    assert metric(text, "asrd_queue_oldest_age_seconds") >= 0


def test_redis_away_answers_503_and_recovers(
    replicas: tuple[TestClient, TestClient], redis_server: RedisServer
) -> None:
    first, second = replicas
    kept = submit(first)
    assert first.get("/hc").json()["status"] == "ok"
    redis_server.stop()
    try:
        for response in (
            first.post("/api/v1/tasks", files={"file": ("a.wav", CLIP)}),
            second.get(f"/api/v1/tasks/{kept['task_id']}"),
            second.delete(f"/api/v1/tasks/{kept['task_id']}"),
        ):
            error = assert_error(response, 503, "queue_unavailable")
            assert "Redis" in error["message"] and response.headers["retry-after"]
        health = first.get("/hc")
        assert health.status_code == 503 and health.json()["status"] == "queue_unavailable"
        assert "unreachable" in health.json()["error"]
        assert "redis://" not in health.json()["error"]
    finally:
        redis_server.start()  # the append-only file keeps what was accepted
    assert first.get("/hc").status_code == 200
    back = second.get(f"/api/v1/tasks/{kept['task_id']}").json()
    assert back["status"] == "pending" and back["position_in_queue"] == 1
    submit(second)


# --- SYNC_VIA_WORKERS: the relay between an API replica and a worker (fake model) -------------


class SlowSlot(FakeSlot):
    """A model that yields a segment every `every_s` seconds, for `count` segments."""

    def __init__(self, every_s: float, count: int = 100):
        super().__init__("tiny.en", multilingual=False)
        self.every_s, self.count, self.closed = every_s, count, asyncio.Event()

    async def stream(self, samples, options, *, streaming=True):  # type: ignore[override]
        try:
            for i in range(self.count):
                await asyncio.sleep(self.every_s)
                yield Segment(float(i), i + 1.0, f" word{i}")
            yield canned(len(samples) / 16_000, options)
        finally:
            self.closed.set()


def relay(redis_server: RedisServer, slot: FakeSlot, **link: float):
    """A RemoteSlot on an API replica's side, a SyncJobRunner on a worker's with `slot`."""
    from asrd.tasks.redis_queue import RedisTaskQueue
    from asrd.tasks.remote import RemoteLink, RemoteSlot, SyncJobRunner

    prefix = f"s{secrets.token_hex(4)}"
    options = dict(prefix=prefix, max_pending=4, max_pending_bytes=10**6, ttl_s=60,
                   refresh_on_read=True)  # fmt: skip
    api_queue = RedisTaskQueue(redis_server.url, **options)  # type: ignore[arg-type]
    worker_queue = RedisTaskQueue(redis_server.url, **options)  # type: ignore[arg-type]
    runner = SyncJobRunner(worker_queue, FakeRegistry(slot))  # type: ignore[arg-type]
    remote = RemoteSlot(slot, RemoteLink(api_queue, **{"wait_s": 2, "lease_s": 2, **link}))
    return remote, runner, (api_queue, worker_queue)


SAMPLES = np.zeros(32_000, np.float32)
OPTIONS = TranscribeOptions(language="en")


class RecordingSlot(FakeSlot):
    """Keeps the samples it was given."""

    def __init__(self) -> None:
        super().__init__("tiny.en", multilingual=False)
        self.samples: list[np.ndarray] = []

    async def transcribe(self, samples, options):  # type: ignore[override]
        self.samples.append(samples)
        return await super().transcribe(samples, options)


def test_sync_requests_run_on_a_worker(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        slot = RecordingSlot()
        remote, runner, queues = relay(redis_server, slot)
        worker = asyncio.create_task(runner.run())
        try:
            # The samples arrive as the decoder gave them (int16), bit for bit.
            decoded = np.random.default_rng(0).integers(-32768, 32767, 48_000, dtype=np.int16)
            await remote.transcribe(decoded, OPTIONS)
            assert slot.samples[-1].dtype == np.int16
            assert np.array_equal(slot.samples[-1], decoded)
            transcript = await remote.transcribe(SAMPLES, OPTIONS)
            assert transcript.text == "Hello world. Bye." and transcript.duration == 2.0
            assert transcript.segments[0].words[1].word == " world."
            items = [item async for item in remote.stream(SAMPLES, OPTIONS)]
            assert [type(i).__name__ for i in items] == ["Segment", "Segment", "Transcript"]
            assert slot.calls[-1].language == "en"
        finally:
            await runner.stop(0)
            worker.cancel()
            for queue in queues:
                await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert redis_server.keys("s*:s[ar]:*") == []


def test_no_worker_in_time_is_a_clear_error(redis_server: RedisServer) -> None:
    from asrd.tasks.remote import WorkerUnavailable

    async def scenario() -> None:
        remote, _, queues = relay(redis_server, FakeSlot("tiny.en"), wait_s=0.5)
        with pytest.raises(WorkerUnavailable, match="no worker took the request"):
            await remote.transcribe(SAMPLES, OPTIONS)
        for queue in queues:
            await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert redis_server.keys("s*:sa:*") == []  # the samples went with the refusal


def test_a_client_that_hangs_up_stops_the_worker(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        slot = SlowSlot(every_s=0.1)
        remote, runner, queues = relay(redis_server, slot)
        worker = asyncio.create_task(runner.run())
        try:
            async with contextlib.aclosing(remote.stream(SAMPLES, OPTIONS)) as items:
                async for _ in items:
                    break  # the client goes away after one segment
            await asyncio.wait_for(slot.closed.wait(), 5)  # the worker's stream was closed
        finally:
            await runner.stop(0)
            worker.cancel()
            for queue in queues:
                await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_worker_that_stops_answering_is_a_clear_error(redis_server: RedisServer) -> None:
    from asrd.tasks.remote import WorkerUnavailable

    async def scenario() -> None:
        slot = SlowSlot(every_s=60)  # it takes the request, then nothing more comes
        remote, runner, queues = relay(redis_server, slot, lease_s=1)

        async def dead(job: str, work: asyncio.Task) -> None:  # no pings: as if killed
            await asyncio.sleep(3600)

        runner._watch = dead  # type: ignore[method-assign]
        worker = asyncio.create_task(runner.run())
        started = time.monotonic()
        try:
            with pytest.raises(WorkerUnavailable, match="stopped answering"):
                await remote.transcribe(SAMPLES, OPTIONS)
            assert time.monotonic() - started < 5
        finally:
            await runner.stop(0)
            worker.cancel()
            for queue in queues:
                await queue.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
