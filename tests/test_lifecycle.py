"""Model lifecycle: load on start-up or on demand, unload after idle, model choice rules."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from asrd import engine as engine_module
from asrd.config import ConfigError, load_settings
from asrd.engine import choose_device
from asrd.models import choose_model_id

from conftest import CLIPS, SERVER_ENV, AsrdServer, wer

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
    monkeypatch.setattr(engine_module.ctranslate2, "get_cuda_device_count", lambda: 1)
    assert choose_device(load_settings()).device == "cuda"
    assert choose_device(load_settings()).compute_type == "float16"
    monkeypatch.setenv("USE_GPU_IF_AVAILABLE", "0")
    assert choose_device(load_settings()).device == "cpu"
    assert choose_device(load_settings()).compute_type == "int8"
    monkeypatch.setattr(engine_module.ctranslate2, "get_cuda_device_count", lambda: 0)
    monkeypatch.setenv("DEVICE", "cuda")
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        choose_device(load_settings())
