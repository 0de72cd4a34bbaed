"""The HTTP layer against fake models (tests/fakes.py): which model a request reaches, how each
answer is rendered, how each model failure is told to the client. In-process and fast; the
words themselves are proven end to end elsewhere, with the real models."""

from __future__ import annotations

import json

import pytest

from conftest import CLIPS
from fakes import FakeSlot, ModelNotReady, fake_server

AUDIO = CLIPS["en_timit_LDC93S1.wav"].read()


def test_each_api_reaches_the_model_it_names() -> None:
    tiny, base = FakeSlot("tiny.en", multilingual=False), FakeSlot("base")
    with fake_server(tiny, base) as client:
        files = {"file": ("a.wav", AUDIO)}
        assert client.post("/v1/audio/transcriptions", files=files).status_code == 200
        response = client.post("/v1/audio/transcriptions", files=files, data={"model": "base"})
        assert response.json()["text"] == "Hello world. Bye."
        assert client.post("/v1/audio/translations", files=files,
                           data={"model": "base"}).status_code == 200  # fmt: skip
        answer = client.post("/asr", params={"model": "base", "language": "fr"}, content=AUDIO)
        assert answer.headers["X-Model-ID"] == "base" and answer.json()["language"] == "fr"
        assert client.post("/asr", content=AUDIO).headers["X-Model-ID"] == "tiny.en"
    assert len(tiny.calls) == 2 and len(base.calls) == 3
    assert [call.task for call in base.calls] == ["transcribe", "translate", "transcribe"]


@pytest.mark.parametrize(
    "fmt,expected",
    [
        ("text", "Hello world. Bye.\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:01,000\nHello world.\n\n"
                "2\n00:00:01,500 --> 00:00:02,000\nBye.\n"),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nHello world.\n\n"
                "00:00:01.500 --> 00:00:02.000\nBye.\n"),
    ],
)  # fmt: skip
def test_text_formats_render_the_transcript(fmt: str, expected: str) -> None:
    with fake_server(FakeSlot("tiny.en")) as client:
        response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", AUDIO)},
                               data={"response_format": fmt})  # fmt: skip
    assert response.status_code == 200 and response.text.strip() == expected.strip()
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_verbose_json_has_segments_and_words() -> None:
    with fake_server(FakeSlot("tiny.en")) as client:
        body = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", AUDIO)},
            data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
        ).json()
    assert body["segments"] is None and [w["word"] for w in body["words"]] == [
        "Hello", "world.", "Bye."
    ]  # fmt: skip
    assert body["language"] == "english" and body["usage"]["seconds"] == 3


def test_a_model_that_cannot_take_the_request_is_told_apart() -> None:
    busy = FakeSlot("base", failure=ModelNotReady("no room to load base", retry_after_s=10))
    with fake_server(FakeSlot("tiny.en", multilingual=False), busy) as client:
        refused = client.post("/asr", params={"model": "base"}, content=AUDIO)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "10"
        assert refused.json()["error"] == {"code": "model_not_ready",
                                           "message": "no room to load base"}  # fmt: skip
        unknown = client.post("/asr", params={"model": "large-v3"}, content=AUDIO)
        assert (
            unknown.status_code == 404 and "`tiny.en`, `base`" in unknown.json()["error"]["message"]
        )
        english_only = client.post("/asr", params={"language": "fr"}, content=AUDIO)
        assert english_only.json()["error"]["code"] == "invalid_language"
        translate = client.post("/v1/audio/translations", files={"file": ("a.wav", AUDIO)})
        assert translate.json()["error"]["code"] == "unsupported_task"


def test_streamed_events_come_from_the_model_it_names() -> None:
    base = FakeSlot("base")
    with fake_server(FakeSlot("tiny.en"), base) as client:
        response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", AUDIO)},
                               data={"stream": "true", "model": "base"})  # fmt: skip
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
    ]
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert events[-1]["text"] == "Hello world. Bye." and len(base.calls) == 1


def test_models_are_listed_with_what_they_can_do() -> None:
    with fake_server(FakeSlot("tiny.en", multilingual=False), FakeSlot("base")) as client:
        data = client.get("/v1/models").json()["data"]
        health = client.get("/hc")
    assert [(m["id"], m["default"], m["tasks"]) for m in data] == [
        ("tiny.en", True, ["transcribe"]),
        ("base", False, ["transcribe", "translate"]),
        ("whisper-1", True, ["transcribe"]),
    ]
    assert health.json()["status"] == "ok"


def test_models_on_disk_but_not_served_are_listed_on_request(tmp_path) -> None:
    snapshot = tmp_path / "hub" / "models--Systran--faster-whisper-small" / "snapshots" / "x"
    snapshot.mkdir(parents=True)
    (snapshot / "model.bin").write_bytes(b"")
    unfinished = tmp_path / "hub" / "models--Systran--faster-whisper-medium"
    unfinished.mkdir(parents=True)
    with fake_server(FakeSlot("tiny.en", multilingual=False), cache_dir=tmp_path) as client:
        served = client.get("/v1/models").json()["data"]
        everything = client.get("/v1/models", params={"available": "true"}).json()["data"]
    assert all(model["served"] for model in served)
    extra = {m["id"]: m for m in everything if not m["served"]}
    assert set(extra) == {"base", "small"}  # base: the installed `offline` packages
    assert extra["small"]["tasks"] == ["transcribe", "translate"] and not extra["small"]["loaded"]
