"""Model lifecycle: load on start-up or on demand, unload after idle, model choice rules; start-up
failures (port in use, no GPU) and model downloads (progress, timeouts, SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ctranslate2
import httpx
import pytest

from asrd import devices as devices_module
from asrd.config import ConfigError, load_settings
from asrd.devices import choose_device
from asrd.models import choose_model_id

from conftest import CLIPS, SERVER_ENV, AsrdServer, free_port, model_dir, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]


def status(http: httpx.Client) -> dict:
    return http.get("/api/v1/decoder_status").json()


def wait_unloaded(http: httpx.Client, timeout: float = 10) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not status(http)["model_loaded"]:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError("model never unloaded")


def test_lazy_load_then_unload_after_idle(tmp_path: Path) -> None:
    env = {**SERVER_ENV, "LOAD_MODEL_ON_STARTUP": "0", "UNLOAD_MODEL_AFTER_S": "1.5"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()  # 200 at once: nothing to load yet
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/hc").json()["status"] == "standby"
            assert status(http)["model_loaded"] is False and status(http)["state"] == "unloaded"
            for _ in range(2):  # load on demand, unload when idle, and again
                response = http.post("/asr", content=JFK.read())
                assert response.status_code == 200
                assert wer(JFK.transcript, response.json()["text"]) <= 0.15
                assert status(http)["model_loaded"] is True
                assert http.get("/hc").json()["status"] == "ok"
                idle = wait_unloaded(http)
                assert 1.0 < idle < 4.0, idle
                assert http.get("/hc").json() == {"status": "standby", "version": "0.1.0"}
        assert "model unloaded after 1.5 s idle" in server.log()
    finally:
        server.stop()


def test_unload_at_zero_waits_for_the_work(tmp_path: Path) -> None:
    env = {**SERVER_ENV, "UNLOAD_MODEL_AFTER_S": "0"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            wait_unloaded(http)  # right after the start-up load
            task = http.post("/api/v1/transcribe", files={"file": ("a.flac", JFK.read())})
            sync = http.post("/asr", content=JFK.read())  # runs while the task holds the model
            assert sync.status_code == 200 and wer(JFK.transcript, sync.json()["text"]) <= 0.15
            task_id = task.json()["task_id"]
            deadline = time.monotonic() + 30
            while http.get(f"/api/v1/tasks/{task_id}").json()["status"] != "finished":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert wait_unloaded(http) < 2
    finally:
        server.stop()


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"MODEL_ID": "base", "DEVELOP_MODE": "1"}, "tiny.en"),
        ({"MODEL_ID": "base", "CPU_FALLBACK_MODEL": "tiny.en"}, "tiny.en"),  # no GPU here
    ],
)
def test_model_choice_on_a_live_server(tmp_path: Path, env: dict, expected: str) -> None:
    server = AsrdServer({**SERVER_ENV, **env}, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert status(http)["model"] == expected
            response = http.post("/asr", content=JFK.read())
            assert response.headers["X-Model-ID"] == expected
    finally:
        server.stop()


def test_model_choice_rules() -> None:
    assert choose_model_id("large-v3", on_cpu=True, cpu_fallback_model="base") == "base"
    assert choose_model_id("large-v3", on_cpu=False, cpu_fallback_model="base") == "large-v3"
    assert choose_model_id("openai/whisper-large-v3", on_cpu=False, max_model="small") == "small"
    assert choose_model_id("medium.en", on_cpu=False, max_model="base") == "base.en"
    assert choose_model_id("tiny", on_cpu=False, max_model="base") == "tiny"
    assert choose_model_id("/models/custom", on_cpu=False, max_model="tiny") == "/models/custom"
    assert choose_model_id("large-v3", on_cpu=False, develop_mode=True) == "tiny.en"


def test_use_gpu_if_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices_module.ctranslate2, "get_cuda_device_count", lambda: 1)
    assert choose_device(load_settings()).device == "cuda"
    assert choose_device(load_settings()).compute_type == "float16"
    monkeypatch.setenv("USE_GPU_IF_AVAILABLE", "0")
    assert choose_device(load_settings()).device == "cpu"
    assert choose_device(load_settings()).compute_type == "int8"
    monkeypatch.setattr(devices_module.ctranslate2, "get_cuda_device_count", lambda: 0)
    monkeypatch.setenv("DEVICE", "cuda")
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        choose_device(load_settings())


# --- start-up: one clear line and an exit status, before anything slow ------------------------


def run_serve(env: dict[str, str], timeout: float = 30) -> tuple[int, str, float]:
    full_env = {**os.environ, "MODEL_ID": "tiny.en", **env}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "asrd", "serve"], env=full_env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("host", ["127.0.0.1", "*"])
def test_port_in_use(host: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, elapsed = run_serve({"HOST": host, "PORT": str(port)})
    shown = "127.0.0.1" if host != "*" else "0.0.0.0"
    assert code == 1
    assert stderr == f"asrd: can't listen on {shown}:{port}: address already in use\n"
    assert elapsed < 10  # Python's start-up and imports: no model is loaded


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="a GPU is here")
def test_device_cuda_without_a_gpu() -> None:
    code, stderr, _ = run_serve({"DEVICE": "cuda", "PORT": str(free_port())})
    assert code == 2
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("asrd: DEVICE=cuda but no usable CUDA device was found")


def test_every_interface_means_ipv4_and_ipv6(server: AsrdServer) -> None:
    """HOST=* (the default, as in the shared server): both address families."""
    assert httpx.get(f"http://127.0.0.1:{server.port}/hc").status_code == 200
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        response = httpx.get(f"http://[::1]:{server.port}/hc")
    except httpx.ConnectError:
        pytest.skip("no IPv6 loopback here")
    assert response.status_code == 200


# --- model downloads: a fake Hugging Face hub on loopback (HF_ENDPOINT) -----------------------

HUB_REPO = "asrd-test/whisper-tiny-en"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(ThreadingHTTPServer):
    """Serves the bundled tiny.en model as a hub repo: repo info, file list, HEAD and GET of
    each file. `mode`: "ok" (model.bin at `rate` bytes/s), "stall" (model.bin's body never
    comes)."""

    daemon_threads = True

    def __init__(self, mode: str, rate: float = 15e6):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.mode, self.rate = mode, rate
        self.files = {path.name: path for path in Path(model_dir()).iterdir() if path.is_file()}
        self.stop = threading.Event()  # ends stalled answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub
    protocol_version = "HTTP/1.1"

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self) -> Path | None:
        prefix = f"/{HUB_REPO}/resolve/{HUB_COMMIT}/"
        path = self.path.split("?")[0]
        return self.server.files.get(path.removeprefix(prefix)) if path.startswith(prefix) else None

    def _file_headers(self, file: Path) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(file.stat().st_size))
        self.send_header("ETag", f'"{abs(hash(file.name)):x}"')
        self.send_header("X-Repo-Commit", HUB_COMMIT)
        self.end_headers()

    def do_HEAD(self) -> None:
        file = self._file()
        if file is None:
            self.send_error(404)
            return
        self._file_headers(file)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == f"/api/models/{HUB_REPO}/revision/main":
            siblings = [{"rfilename": name} for name in self.server.files]
            self._json({"id": HUB_REPO, "sha": HUB_COMMIT, "siblings": siblings})
            return
        if path.startswith(f"/api/models/{HUB_REPO}/tree/"):
            files = self.server.files.items()
            self._json([{"type": "file", "path": name, "size": file.stat().st_size,
                         "oid": f"{abs(hash(name)):x}"} for name, file in files])  # fmt: skip
            return
        file = self._file()
        if file is None:
            self.send_error(404)
            return
        self._file_headers(file)
        if file.name == "model.bin" and self.server.mode == "stall":
            self.server.stop.wait(120)
            return
        data, step = file.read_bytes(), 256 * 1024
        with contextlib.suppress(OSError):
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                if file.name == "model.bin":
                    time.sleep(step / self.server.rate)

    def log_message(self, format: str, *args: object) -> None:
        pass


def hub_env(hub: FakeHub, cache: Path) -> dict[str, str]:
    return {
        **SERVER_ENV,
        "MODEL_ID": HUB_REPO,
        "CACHE_DIR": str(cache),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DOWNLOAD_TIMEOUT": "1",  # huggingface_hub's own per-request timeout
        "HF_HUB_ETAG_TIMEOUT": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def test_model_download_logs_its_progress(tmp_path: Path) -> None:
    with FakeHub("ok", rate=12e6) as hub:  # 75 MB: about 6 s
        server = AsrdServer(hub_env(hub, tmp_path / "cache"), tmp_path / "asrd.log")
        try:
            server.wait_ready(60)
            response = httpx.post(f"{server.url}/asr", content=JFK.read(), timeout=60)
            assert wer(JFK.transcript, response.json()["text"]) <= 0.15
        finally:
            server.stop()
    log = server.log()
    assert f"downloading model {HUB_REPO} ({HUB_REPO}) from {hub.url}" in log
    progress = [line for line in log.splitlines() if f"downloading {HUB_REPO}:" in line]
    assert progress and "MB so far" in progress[0]
    assert f"downloaded {HUB_REPO}: 78.1 MB in" in log


def test_a_stalled_model_download_fails(tmp_path: Path) -> None:
    """The hub stops sending: huggingface_hub's read timeout (HF_HUB_DOWNLOAD_TIMEOUT=1 here,
    10 s by default) and its 5 resumes end it, and asrd exits 1 with the reason."""
    with FakeHub("stall") as hub:
        started = time.monotonic()
        server = AsrdServer(hub_env(hub, tmp_path / "cache"), tmp_path / "asrd.log")
        code = server.process.wait(60)
        elapsed = time.monotonic() - started
        server.stop()
    assert code == 1, server.log()
    assert f"asrd: the model could not be loaded: could not download {HUB_REPO!r}" in server.log()
    assert elapsed < 30, elapsed


def test_sigterm_during_a_model_download(tmp_path: Path) -> None:
    with FakeHub("stall") as hub:
        env = {**hub_env(hub, tmp_path / "cache"), "SHUTDOWN_GRACE_S": "2",
               "HF_HUB_DOWNLOAD_TIMEOUT": "30"}  # fmt: skip
        server = AsrdServer(env, tmp_path / "asrd.log")
        deadline = time.monotonic() + 30
        while f"downloading model {HUB_REPO}" not in server.log():
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()
            time.sleep(0.1)
        time.sleep(1)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(10)
        exited = time.monotonic() - signalled
        server.stop()
    assert code == 0, server.log()
    assert exited < 2 + 2, exited
    assert "exiting with work still running in asrd-loader" in server.log()


def test_asrd_download_fetches_ahead_with_a_progress_bar(tmp_path: Path) -> None:
    """`asrd download` puts a model into CACHE_DIR for servers that start offline later."""
    cache = tmp_path / "cache"
    with FakeHub("ok", rate=40e6) as hub:
        env = {**os.environ, **hub_env(hub, cache)}
        result = subprocess.run([sys.executable, "-m", "asrd", "download", HUB_REPO, "no-such"],
                                env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr  # one of the two failed
    assert f"{HUB_REPO}: {cache}" in result.stdout and " MB" in result.stderr
    assert "asrd: no-such: unknown model" in result.stderr
    # Offline now (no hub at all): the server finds it in the cache.
    offline = {**hub_env(hub, cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    with AsrdServer(offline, tmp_path / "asrd.log") as server:
        response = httpx.post(f"{server.url}/asr", content=JFK.read(), timeout=60)
    assert wer(JFK.transcript, response.json()["text"]) <= 0.15
