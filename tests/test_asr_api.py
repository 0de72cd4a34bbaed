"""End to end: a real `asrd serve` with the real tiny.en model, real speech, real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from conftest import (
    CLIPS,
    SAMPLE_RATE,
    AsrdServer,
    assert_error,
    encode,
    long_english_audio,
    wer,
)

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
LS = CLIPS["en_ls_1089-134686-0001.wav"]


def assert_transcribes(response: httpx.Response, clip, max_wer: float = 0.25) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"text", "chunks", "language", "duration"}
    assert wer(clip.transcript, body["text"]) <= max_wer, body["text"]
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(clip.duration, abs=0.1)
    assert_monotonic(body["chunks"], body["duration"])
    return body


def assert_monotonic(chunks: list[dict], duration: float) -> None:
    previous_end = 0.0
    for chunk in chunks:
        start, end = chunk["timestamp"]
        assert previous_end <= start <= end <= duration + 1e-6, chunks
        previous_end = end


# --- the four ways in ---------------------------------------------------------------------


def test_raw_body_octet_stream(client: httpx.Client) -> None:
    response = client.post(
        "/asr", content=JFK.read(), headers={"Content-Type": "application/octet-stream"}
    )
    body = assert_transcribes(response, JFK)
    assert "ask not what your country can do for you" in body["text"].lower().replace(",", "")
    # The seed's headers; X-Audio-Length is the true duration, not the last timestamp.
    assert float(response.headers["X-Audio-Length"]) == pytest.approx(11.0, abs=0.05)
    assert float(response.headers["X-Processing-Time"]) > 0
    rtf = float(response.headers["X-Realtime-Factor"])
    assert rtf == pytest.approx(11.0 / float(response.headers["X-Processing-Time"]), rel=0.05)
    assert response.headers["X-Model-ID"] == "tiny.en"


@pytest.mark.parametrize("content_type", [None, "audio/wav", "application/x-www-form-urlencoded"])
def test_raw_body_other_content_types(client: httpx.Client, content_type: str | None) -> None:
    # No Content-Type, audio/*, and what `curl --data-binary` sends by default.
    headers = {"Content-Type": content_type} if content_type else {}
    request = client.build_request("POST", "/asr", content=LS.read(), headers=headers)
    assert request.headers.get("Content-Type") == content_type
    assert_transcribes(client.send(request), LS)


def test_multipart_file(client: httpx.Client) -> None:
    response = client.post("/asr", files={"file": ("speech.wav", LS.read(), "audio/wav")})
    assert_transcribes(response, LS)


def test_url_download(client: httpx.Client, file_server: str) -> None:
    response = client.post("/asr", json={"url": f"{file_server}/{JFK.name}"})
    assert_transcribes(response, JFK)


def test_url_download_follows_redirect(client: httpx.Client, file_server: str) -> None:
    assert_transcribes(client.post("/asr", json={"url": f"{file_server}/redirect"}), JFK)


def test_local_path_allowed(client: httpx.Client, allowed_dir: Path) -> None:
    assert_transcribes(client.post("/asr", json={"url": str(allowed_dir / "jfk.flac")}), JFK)
    assert_transcribes(client.post("/asr", json={"url": f"file://{allowed_dir}/jfk.flac"}), JFK)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{allowed}/../outside/secret.wav",  # `..` is resolved before the check
        "{allowed}/escape.wav",  # so is a symlink that points outside
        "/proc/self/environ",
    ],
)
def test_local_path_forbidden(client: httpx.Client, allowed_dir: Path, path: str) -> None:
    response = client.post("/asr", json={"url": path.format(allowed=allowed_dir)})
    assert_error(response, 403, "forbidden_path")


def test_local_path_missing_and_special_files(client: httpx.Client, allowed_dir: Path) -> None:
    assert_error(client.post("/asr", json={"url": f"{allowed_dir}/nope.wav"}), 404)
    assert_error(client.post("/asr", json={"url": f"{allowed_dir}/pipe"}), 400, "not_a_file")


def test_defaults_refuse_local_files_and_private_urls(tmp_path: Path, file_server: str) -> None:
    server = AsrdServer({"LOCAL_FILE_DIRS": ""}, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/asr", json={"url": str(JFK.path)}, timeout=30)
        error = assert_error(response, 403, "local_files_disabled")
        assert "LOCAL_FILE_DIRS" in error["message"]
        port = urlsplit(file_server).port
        for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.2"):
            url = f"http://{host}:{port}/{JFK.name}"
            loopback = httpx.post(f"{server.url}/asr", json={"url": url}, timeout=30)
            error = assert_error(loopback, 403, "url_not_allowed")
            assert "ALLOW_PRIVATE_URLS" in error["message"]
        callback = httpx.post(
            f"{server.url}/api/v1/transcribe",
            files={"file": ("a.flac", JFK.read())},
            data={"callback_url": "http://127.0.0.1:9/hook"},
            timeout=30,
        )
        assert_error(callback, 400, "invalid_callback_url")
    finally:
        server.stop()


# --- formats ------------------------------------------------------------------------------

FORMAT_FILES = [
    "en_jfk_inaugural_1961.flac",  # flac, 44.1 kHz stereo
    "en_jfk_inaugural_1961_16k.mp3",
    "en_ls_1089-134686-0001_transcoded.ogg",
    "en_ls_1089-134686-0001_transcoded.opus",
    "en_ls_1089-134686-0001_transcoded.webm",
    "en_ls_1089-134686-0001_transcoded.m4a",
    "en_ls_1089-134686-0001_transcoded.mp3",
    "en_timit_LDC93S1_8k.wav",
    "en_timit_LDC93S1_44k_stereo.wav",
    "en_ms_whats_the_weather_like_alaw.wav",
    "en_ms_whats_the_weather_like_mulaw.wav",
]


@pytest.mark.parametrize("name", FORMAT_FILES)
def test_formats(client: httpx.Client, name: str) -> None:
    clip = CLIPS[name]
    response = client.post("/asr", content=clip.read())
    assert response.status_code == 200, response.text
    body = response.json()
    assert wer(clip.transcript, body["text"]) <= 0.25, body["text"]
    assert body["duration"] == pytest.approx(clip.duration, abs=0.1)


# --- long audio, silence ------------------------------------------------------------------


def test_long_audio_is_chunked_with_monotonic_timestamps(client: httpx.Client) -> None:
    samples, transcript = long_english_audio(repeats=2)
    duration = len(samples) / SAMPLE_RATE
    assert duration > 120
    response = client.post("/asr", content=encode(samples, "flac"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(duration, abs=0.05)
    assert len(body["chunks"]) >= 10
    assert_monotonic(body["chunks"], duration)
    # Speech runs to the end of the file, so the last chunk must end near it.
    assert body["chunks"][-1]["timestamp"][1] > duration - 15
    assert wer(transcript, body["text"]) <= 0.25


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_silence_gives_empty_text(client: httpx.Client, fmt: str) -> None:
    silence = np.zeros(10 * SAMPLE_RATE, np.float32)
    response = client.post("/asr", content=encode(silence, fmt))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "" and body["chunks"] == []
    assert body["duration"] == pytest.approx(10, abs=0.1)


def test_quiet_noise_gives_empty_text(client: httpx.Client) -> None:
    noise = np.random.default_rng(7).normal(0, 0.003, 8 * SAMPLE_RATE).astype(np.float32)
    response = client.post("/asr", content=encode(noise, "wav"))
    assert response.status_code == 200, response.text
    assert response.json()["text"] == ""


def test_music_gives_empty_text(client: httpx.Client) -> None:
    # Synthetic music: decaying harmonic notes, a second each, no voice.
    t = np.arange(12 * SAMPLE_RATE) / SAMPLE_RATE
    music = np.zeros_like(t)
    for i, freq in enumerate([261.6, 329.6, 392.0, 523.3, 440.0, 349.2] * 2):
        note = (t >= i) & (t < i + 1)
        for harmonic in (1, 2, 3):
            music[note] += 0.15 / harmonic * np.sin(2 * np.pi * freq * harmonic * t[note])
    music *= np.exp(-(t % 1) * 1.5)
    response = client.post("/asr", content=encode(music.astype(np.float32), "wav"))
    assert response.status_code == 200, response.text
    assert response.json()["text"] == ""


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"this is not audio at all",
        os.urandom(20_000),
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # a WAV header and nothing else
        CLIPS["en_ls_1089-134686-0001_transcoded.m4a"].read()[:600],  # truncated container
    ],
    ids=["text", "random", "wav-header-only", "truncated-m4a"],
)
def test_undecodable_audio_is_400(client: httpx.Client, content: bytes) -> None:
    assert_error(client.post("/asr", content=content), 400, "invalid_audio")


def test_empty_body_is_400(client: httpx.Client) -> None:
    assert_error(client.post("/asr", content=b""), 400, "invalid_audio")
    assert_error(client.post("/asr", files={"file": ("a.wav", b"", "audio/wav")}), 400)


def test_oversize_body_is_413(client: httpx.Client) -> None:
    big = b"\0" * (10 * 1024 * 1024)  # MAX_UPLOAD_MB=8
    assert_error(client.post("/asr", content=big), 413, "too_large")

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(10):
            yield b"\0" * (1024 * 1024)

    assert_error(client.post("/asr", content=chunks()), 413, "too_large")


def test_overlong_audio_is_413(client: httpx.Client) -> None:
    silence = encode(np.zeros(401 * SAMPLE_RATE, np.float32), "mp3")  # MAX_AUDIO_S=400
    assert len(silence) < 8 * 1024 * 1024
    assert_error(client.post("/asr", content=silence), 413, "audio_too_long")


@pytest.mark.parametrize(
    "payload,status",
    [
        ({"foo": 1}, 422),
        ({"url": ["a", "b"]}, 422),
        ({"url": 42}, 422),
        ([1, 2], 422),
        ({"url": ""}, 422),
        ({"url": "relative/path.wav"}, 400),
        ({"url": "ftp://example.com/a.wav"}, 400),
    ],
)
def test_bad_json_requests(client: httpx.Client, payload: object, status: int) -> None:
    assert_error(client.post("/asr", json=payload), status)


def test_invalid_json_and_wrong_shapes(client: httpx.Client) -> None:
    broken = client.post("/asr", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(broken, 400, "invalid_json")
    assert_error(client.post("/asr", files={"other": ("a.wav", LS.read())}), 422)
    assert_error(client.post("/asr", data={"file": "not a file"}, files={"x": ("x", b"1")}), 422)
    # Any Content-Type but JSON and multipart is audio (as in the seed): the decoder refuses it.
    text = client.post("/asr", content=b"hello", headers={"Content-Type": "text/plain"})
    assert_error(text, 400, "invalid_audio")


def test_url_errors(client: httpx.Client, file_server: str) -> None:
    assert_error(client.post("/asr", json={"url": f"{file_server}/missing.wav"}), 502)
    started = time.monotonic()
    assert_error(client.post("/asr", json={"url": f"{file_server}/slow"}), 504, "fetch_timeout")
    assert time.monotonic() - started < 4
    assert_error(client.post("/asr", json={"url": f"{file_server}/big"}), 413, "too_large")
    port = httpx.URL(file_server).port
    closed = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/a.wav"
    assert client.post("/asr", json={"url": closed}).status_code in (502, 504)
    assert_error(client.post("/asr", json={"url": f"{file_server}/README.md"}), 400)


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/asr"), 405)


# --- serving while busy ---------------------------------------------------------------------


def test_health_answers_during_long_transcription(client: httpx.Client) -> None:
    samples, _ = long_english_audio(repeats=2)
    body = encode(samples, "flac")
    result: dict = {}

    def transcribe() -> None:
        result["response"] = client.post("/asr", content=body)

    worker = threading.Thread(target=transcribe)
    worker.start()
    time.sleep(0.5)
    latencies = []
    while worker.is_alive():
        started = time.monotonic()
        response = client.get("/hc")
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "version": response.json()["version"]}
        time.sleep(0.2)
    worker.join()
    assert result["response"].status_code == 200
    assert len(latencies) >= 3, "the transcription ended too soon to observe /hc"
    assert max(latencies) < 1.0, latencies


def test_concurrent_requests_each_get_their_own_result(client: httpx.Client) -> None:
    clips = [JFK, LS, CLIPS["en_cmuarctic_a0024.wav"], CLIPS["en_riva_what_is_nlp.wav"]] * 2
    with concurrent.futures.ThreadPoolExecutor(len(clips)) as pool:
        responses = list(pool.map(lambda c: client.post("/asr", content=c.read()), clips))
    for clip, response in zip(clips, responses, strict=True):
        assert_transcribes(response, clip, max_wer=0.3)


def test_server_keeps_serving_after_bad_requests(client: httpx.Client) -> None:
    for content in (b"", b"junk", os.urandom(4096)):
        assert client.post("/asr", content=content).status_code == 400
    assert client.post("/asr", json={"url": "/etc/shadow"}).status_code == 403
    assert client.get("/hc").status_code == 200
    assert_transcribes(client.post("/asr", content=LS.read()), LS)


def test_openapi_documents_every_endpoint(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    asr = schema["paths"]["/asr"]["post"]
    content = asr["requestBody"]["content"]
    assert {"application/octet-stream", "application/json", "multipart/form-data"} <= set(content)
    assert "url" in json.dumps(content["application/json"])
    assert {"200", "400", "403", "413", "502", "504"} <= set(asr["responses"])
    assert "/hc" in schema["paths"]
    assert client.get("/docs").status_code == 200


# --- query parameters: language, task, word_timestamps ----------------------------------------


def test_word_timestamps_give_one_chunk_per_word(client: httpx.Client) -> None:
    response = client.post("/asr?word_timestamps=true", content=JFK.read())
    body = response.json()
    assert response.status_code == 200
    words = [chunk["text"].strip(",.").lower() for chunk in body["chunks"]]
    assert words[:4] == ["and", "so", "my", "fellow"] and len(words) >= 20
    assert_monotonic(body["chunks"], body["duration"])
    assert wer(JFK.transcript, body["text"]) <= 0.15


def test_bad_query_parameters(client: httpx.Client) -> None:
    assert_error(client.post("/asr?language=fr", content=JFK.read()), 400, "invalid_language")
    assert_error(client.post("/asr?language=zz", content=JFK.read()), 400, "invalid_language")
    assert_error(client.post("/asr?task=summarise", content=JFK.read()), 422)
    assert_transcribes(client.post("/asr?language=en", content=JFK.read()), JFK)


def test_language_and_translation_on_a_multilingual_model(base_server: AsrdServer) -> None:
    french = CLIPS["fr_picovoice_test_fr.wav"]
    with httpx.Client(base_url=base_server.url, timeout=120) as http:
        detected = http.post("/asr", content=french.read()).json()
        assert detected["language"] == "fr"
        assert wer(french.transcript, detected["text"]) <= 0.4
        translated = http.post("/asr?task=translate&language=fr", content=french.read()).json()
    words = set(translated["text"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "of", "and", "in", "is", "was", "a", "it"}, translated["text"]
    assert set(set(detected["text"].lower().split())) - words, "translation equals transcript"


def test_short_request_is_not_stuck_behind_a_long_file(client: httpx.Client) -> None:
    samples, _ = long_english_audio(repeats=2)  # ~150 s: a few seconds of work
    body = encode(samples, "flac")
    finished: dict[str, float] = {}

    def long_request() -> None:
        assert client.post("/asr", content=body).status_code == 200
        finished["long"] = time.monotonic()

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.8)
    started = time.monotonic()
    response = client.post("/asr", content=CLIPS["en_timit_LDC93S1.wav"].read())
    finished["short"] = time.monotonic()
    worker.join()
    clip = CLIPS["en_timit_LDC93S1.wav"]
    assert response.status_code == 200 and wer(clip.transcript, response.json()["text"]) < 0.3
    assert finished["short"] < finished["long"], "the short request waited for the long file"
    assert finished["short"] - started < 4


def test_an_english_only_model_refuses_what_it_cannot_do(client: httpx.Client) -> None:
    """tiny.en would invent English for a translation or French speech: 400 on every API."""
    audio = CLIPS["fr_picovoice_test_fr.wav"].read()
    error = assert_error(client.post("/asr?task=translate", content=audio), 400, "unsupported_task")
    assert "English-only" in error["message"] and "tiny.en" in error["message"]
    assert_error(client.post("/asr?language=fr", content=audio), 400, "invalid_language")
    files = {"file": ("fr.wav", audio)}
    for path in ("/v1/audio/translations", "/api/v1/translate"):
        response = client.post(path, files=files, data={"model": "whisper-1"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "unsupported_task"
    french = client.post("/v1/audio/transcriptions", files=files, data={"language": "fr"})
    assert french.status_code == 400 and french.json()["error"]["code"] == "invalid_language"
