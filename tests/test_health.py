"""Readiness: `/hc` is 503 while the model loads and 200 after; a model that can't load
stops `asrd serve` with a clear message."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from asrd import __version__
from asrd.app import create_app
from asrd.config import load_settings
from asrd.slot import ModelSlot

from conftest import CLIPS, wer


def test_loading_then_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real model and warm-up, held back by a gate so the loading state can be observed.
    gate = threading.Event()
    real_load = ModelSlot.load_sync

    def gated_load(self: ModelSlot) -> None:
        gate.wait(30)
        real_load(self)

    monkeypatch.setattr(ModelSlot, "load_sync", gated_load)
    monkeypatch.setenv("MODEL_ID", "tiny.en")
    app = create_app(load_settings())
    with TestClient(app) as client:
        response = client.get("/hc")
        assert response.status_code == 503 and response.json() == {"status": "loading"}
        refused = client.post("/asr", content=CLIPS["en_timit_LDC93S1.wav"].read())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
        assert "Retry-After" in refused.headers
        gate.set()
        for _ in range(300):
            response = client.get("/hc")
            if response.status_code == 200:
                break
            threading.Event().wait(0.1)
        assert response.json() == {"status": "ok", "version": __version__}
        ok = client.post("/asr", content=CLIPS["en_timit_LDC93S1.wav"].read())
        clip = CLIPS["en_timit_LDC93S1.wav"]
        assert ok.status_code == 200 and wer(clip.transcript, ok.json()["text"]) < 0.3


def test_model_that_cannot_load_stops_the_server(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "asrd", "serve"],
        env={"PATH": "/usr/bin:/bin", "MODEL_ID": str(empty), "PORT": "0", "HOST": "127.0.0.1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "no CTranslate2 Whisper model" in result.stderr
