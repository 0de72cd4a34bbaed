"""Scale-out end to end: a real `redis-server` (append-only file on), two API replicas
(`asrd serve --no-worker`, no model) and two workers (`asrd worker`, tiny.en), all separate
processes, real speech. One cluster for the module; the tests run in file order and leave it
whole for the next (a killed worker is replaced)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, assert_error, encode, long_english_audio, wer
from redis_server import RedisServer

PREFIX = "e2e"
SHORT = [
    "en_jfk_inaugural_1961.flac",
    "en_cmuarctic_a0024.wav",
    "en_ls_1089-134686-0001.wav",
    "en_riva_what_is_nlp.wav",
]
LEASE_S = 3


class _Hook(BaseHTTPRequestHandler):
    """Collects the callbacks' bodies."""

    received: list[dict]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Cluster:
    redis: RedisServer
    apis: list[AsrdServer]
    workers: list[AsrdServer]
    env: dict[str, str]
    logs: Path
    hook_url: str
    callbacks: list[dict] = field(default_factory=list)
    started: int = 0

    def worker(self) -> AsrdServer:
        self.started += 1
        log = self.logs / f"worker-{self.started}.log"
        return AsrdServer(self.env, log, command=("worker",))

    def replace(self, dead: AsrdServer) -> None:
        """A new worker in place of `dead` (killed), ready before it returns."""
        replacement = self.worker()
        self.workers[self.workers.index(dead)] = replacement
        replacement.wait_ready()

    def status(self) -> dict:
        return httpx.get(f"{self.apis[0].url}/api/v1/decoder_status", timeout=10).json()

    def holder(self, task_id: str) -> AsrdServer:
        """The worker process running `task_id` (its name carries its pid)."""
        short = f"{task_id[:4]}…{task_id[-4:]}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for info in self.status()["workers"]:
                if info["task"] == short:
                    pid = int(info["worker"].rsplit("-", 2)[1])
                    return next(w for w in self.workers if w.process.pid == pid)
            time.sleep(0.1)
        raise TimeoutError(f"no worker announced {short}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("scale-out")
    redis = RedisServer(logs).start()
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    hook.received = []  # type: ignore[attr-defined]
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = {
        **SERVER_ENV, "QUEUE_BACKEND": "redis", "REDIS_URL": redis.url, "REDIS_PREFIX": PREFIX,
        "TASK_LEASE_S": str(LEASE_S), "CPU_THREADS": "1", "ALLOW_PRIVATE_URLS": "1",
        "MAX_TASK_QUEUE_SIZE": "4", "SHUTDOWN_GRACE_S": "2",
    }  # fmt: skip
    cluster = Cluster(redis, [], [], env, logs, f"http://127.0.0.1:{hook.server_address[1]}/cb")
    cluster.callbacks = hook.received  # type: ignore[attr-defined]
    try:
        cluster.workers = [cluster.worker(), cluster.worker()]
        # The replicas send their sync requests to the workers too: no model of their own.
        api_env = {**env, "SYNC_VIA_WORKERS": "1", "SYNC_WORKER_WAIT_S": "20"}
        cluster.apis = [
            AsrdServer(api_env, logs / f"api-{i}.log", command=("serve", "--no-worker"))
            for i in (1, 2)
        ]
        for process in cluster.apis + cluster.workers:
            process.wait_ready()
        yield cluster
    finally:
        for process in cluster.apis + cluster.workers:
            process.stop()
        hook.shutdown()
        redis.stop()


def submit(api: AsrdServer, data: bytes, name: str = "a.wav", **form: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}/api/v1/tasks", files={"file": (name, data)}, data=form, timeout=30
    )


def wait_done(api: AsrdServer, task_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{api.url}/api/v1/tasks/{task_id}", timeout=10).json()
        if body["status"] in ("finished", "failed"):
            return body
        time.sleep(0.2)
    raise TimeoutError(task_id)


def wait_processing(api: AsrdServer, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{api.url}/api/v1/tasks/{task_id}").json()["status"] == "processing":
            return
        time.sleep(0.05)
    raise TimeoutError(task_id)


def eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def long_task_audio() -> tuple[bytes, str]:
    samples, transcript = long_english_audio(repeats=1)  # ~75 s: seconds of work
    return encode(samples, "flac"), transcript


# --- the tests, in order -------------------------------------------------------------------


def test_tasks_round_robin_fifo_and_bounded_across_replicas(cluster: Cluster) -> None:
    # Frozen workers take nothing: the four tasks wait, in the cluster's one order.
    for worker in cluster.workers:
        os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        ids = []
        for i, name in enumerate(SHORT):
            created = submit(cluster.apis[i % 2], CLIPS[name].read(), name=name)
            assert created.status_code == 202, created.text
            assert created.json()["position_in_queue"] == i + 1
            ids.append(created.json()["task_id"])
        # MAX_TASK_QUEUE_SIZE=4 is the cluster's: either replica refuses a fifth.
        for api in cluster.apis:
            assert_error(submit(api, CLIPS[SHORT[0]].read()), 429, "queue_full")
        positions = [
            httpx.get(f"{cluster.apis[1].url}/api/v1/tasks/{i}").json()["position_in_queue"]
            for i in ids
        ]
        assert positions == [1, 2, 3, 4]
    finally:
        for worker in cluster.workers:
            os.kill(worker.process.pid, signal.SIGCONT)
    done = [wait_done(cluster.apis[(i + 1) % 2], task_id) for i, task_id in enumerate(ids)]
    for name, body in zip(SHORT, done, strict=True):
        assert body["status"] == "finished", body
        assert wer(CLIPS[name].transcript, body["result"]["text"]) <= 0.3, name
        assert body["used_model_size"] == "tiny.en" and body["file_name"] == name
    # FIFO: each task started no later than the ones submitted after it (two workers take
    # two at once, hence the slack of one take).
    starts = [body["time_started"] for body in done]
    assert starts[0] <= starts[2] and starts[1] <= starts[3]
    status = cluster.status()
    assert len(status["workers"]) == 2
    assert all(w["models"][0]["model"] == "tiny.en" for w in status["workers"])
    assert status["results_kept"] >= 4


def test_a_killed_workers_task_finishes_once(cluster: Cluster) -> None:
    audio, transcript = long_task_audio()
    created = submit(cluster.apis[0], audio, name="long.flac", callback_url=cluster.hook_url)
    task_id = created.json()["task_id"]
    wait_processing(cluster.apis[1], task_id)
    victim = cluster.holder(task_id)
    victim.process.send_signal(signal.SIGKILL)  # mid-task: no goodbye, the lease just lapses
    victim.process.wait()
    done = wait_done(cluster.apis[1], task_id, timeout=300)
    assert done["status"] == "finished", done
    assert wer(transcript, done["result"]["text"]) <= 0.25
    time.sleep(2)  # room for a second callback, if there were one
    posted = [body for body in cluster.callbacks if body["task_id"] == task_id]
    assert len(posted) == 1 and posted[0]["status"] == "finished"
    assert posted[0]["result"]["text"] == done["result"]["text"]
    victim.stop()
    cluster.replace(victim)


def test_delete_on_another_replica_stops_the_running_task(cluster: Cluster) -> None:
    audio, _ = long_task_audio()
    created = submit(cluster.apis[0], audio, name="long.flac", callback_url=cluster.hook_url)
    task_id = created.json()["task_id"]
    wait_processing(cluster.apis[0], task_id)
    runner = cluster.holder(task_id)
    deleted = httpx.delete(f"{cluster.apis[1].url}/api/v1/tasks/{task_id}")
    assert deleted.json() == {"task_id": task_id, "status": "cancelled"}
    assert_error(httpx.get(f"{cluster.apis[0].url}/api/v1/tasks/{task_id}"), 404)
    # The worker hears of it within about a second and stops (well before the task's end).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "cancelled (or taken over) elsewhere" in runner.log():
            break
        time.sleep(0.2)
    assert "cancelled (or taken over) elsewhere" in runner.log()
    assert eventually(lambda: not any(w["busy"] for w in cluster.status()["workers"]))
    assert not [body for body in cluster.callbacks if body["task_id"] == task_id]


def test_redis_down_then_restarted_loses_nothing(cluster: Cluster) -> None:
    ids = []
    for i, name in enumerate(SHORT[:3]):
        created = submit(cluster.apis[i % 2], CLIPS[name].read(), name=name)
        ids.append(created.json()["task_id"])
    cluster.redis.stop()  # some pending, some running
    try:
        error = assert_error(submit(cluster.apis[1], CLIPS[SHORT[0]].read()), 503)
        assert error["code"] == "queue_unavailable"
        assert_error(httpx.get(f"{cluster.apis[0].url}/api/v1/tasks/{ids[0]}"), 503)
        for process in (cluster.apis[0], cluster.workers[0]):
            health = httpx.get(f"{process.url}/hc", timeout=10)
            assert health.status_code == 503
            assert health.json()["status"] == "queue_unavailable"
        time.sleep(1)
    finally:
        cluster.redis.start()
    for i, (name, task_id) in enumerate(zip(SHORT[:3], ids, strict=True)):
        body = wait_done(cluster.apis[i % 2], task_id)
        assert body["status"] == "finished", body
        assert wer(CLIPS[name].transcript, body["result"]["text"]) <= 0.3
    for process in cluster.apis + cluster.workers:
        assert httpx.get(f"{process.url}/hc", timeout=10).status_code == 200


def test_sync_routes_run_on_the_workers(cluster: Cluster) -> None:
    jfk = CLIPS["en_jfk_inaugural_1961.flac"]
    api = cluster.apis[0].url
    asr = httpx.post(f"{api}/asr", content=jfk.read(), timeout=120,
                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert asr.status_code == 200, asr.text
    assert wer(jfk.transcript, asr.json()["text"]) <= 0.15
    assert asr.json()["chunks"] and asr.headers["x-model-id"] == "tiny.en"
    files = {"file": (jfk.name, jfk.read())}
    openai = httpx.post(f"{api}/v1/audio/transcriptions", files=files, timeout=120,
                        data={"model": "whisper-1", "response_format": "json"})  # fmt: skip
    assert openai.status_code == 200, openai.text
    assert wer(jfk.transcript, openai.json()["text"]) <= 0.15
    deltas, done = [], None
    with httpx.stream("POST", f"{api}/v1/audio/transcriptions", files=files, timeout=120,
                      data={"model": "whisper-1", "stream": "true"}) as streamed:  # fmt: skip
        assert streamed.headers["content-type"].startswith("text/event-stream")
        for line in streamed.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["type"] == "transcript.text.delta":
                    deltas.append(event["delta"])
                else:
                    done = event
    assert done is not None and done["type"] == "transcript.text.done", done
    assert len(deltas) >= 1 and wer(jfk.transcript, "".join(deltas)) <= 0.15
    # The replicas never loaded a model: the workers did the work.
    for replica in cluster.apis:
        status = httpx.get(f"{replica.url}/api/v1/decoder_status").json()
        assert status["model_loaded"] is False


def test_a_worker_killed_mid_request_is_a_503_not_a_hang(cluster: Cluster) -> None:
    audio, _ = long_task_audio()
    result: dict = {}

    def request() -> None:
        started = time.monotonic()
        response = httpx.post(f"{cluster.apis[1].url}/v1/audio/transcriptions", timeout=120,
                              files={"file": ("long.flac", audio)},
                              data={"model": "whisper-1"})  # fmt: skip
        result.update(response=response, elapsed=time.monotonic() - started)

    before = {id(w): w.log().count("sync request") for w in cluster.workers}
    client = threading.Thread(target=request)
    client.start()
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        for worker in cluster.workers:
            if worker.log().count("sync request") > before[id(worker)]:
                victim = worker
        time.sleep(0.05)
    assert victim is not None, "no worker took the request"
    victim.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.process.wait()
    client.join(60)
    assert not client.is_alive()
    response = result["response"]
    if response.status_code == 200:  # it had finished before the kill landed
        pytest.skip("the request finished before its worker was killed")
    error = response.json()["error"]
    assert response.status_code == 503 and "stopped" in error["message"], response.text
    assert time.monotonic() - killed < LEASE_S + 5
    victim.stop()
    cluster.replace(victim)


def test_metrics_and_no_audio_left(cluster: Cluster) -> None:
    def metrics() -> str:
        return httpx.get(f"{cluster.workers[0].url}/metrics").text

    # A killed worker's series goes once it has been silent for WORKER_STALE_S (10 s).
    assert eventually(lambda: metrics().count("asrd_worker_busy{") == 2, timeout=20)
    assert "asrd_queue_depth 0.0" in metrics()
    assert "asrd_queue_oldest_age_seconds 0.0" in metrics()
    assert httpx.get(f"{cluster.workers[0].url}/api/v1/decoder_status").status_code == 404
    for kind in ("a", "l", "sa"):  # task audio, leases, sync requests' samples
        assert cluster.redis.keys(f"{PREFIX}:{kind}:*") == []
