"""Many models in one server: `tiny.en` (MODEL_ID) and multilingual `base` (MODELS), picked per
request on every API, loaded on demand, unloaded on their own TTL, evicted at the budget, and
managed by admins. Real servers, real models, real clients."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import (
    CLIPS,
    SERVER_ENV,
    AsrdServer,
    assert_error,
    encode,
    long_english_audio,
    metric,
    wer,
)

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
FRENCH = CLIPS["fr_picovoice_test_fr.wav"]
ADMIN = {"Authorization": "Bearer admin-key"}
BASE_TTL_S = 4


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    """tiny.en by default, base on demand (unloaded 4 s after its last work)."""
    log_path = tmp_path_factory.mktemp("pair") / "asrd.log"
    env = {**SERVER_ENV, "MODELS": "base", "MODEL_TTLS": f"base={BASE_TTL_S}",
           "ADMIN_API_KEYS": "admin-key"}  # fmt: skip
    with AsrdServer(env, log_path) as instance:
        yield instance


def refused(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The JSON error of `response` (OpenAI's shape on /v1, asrd's elsewhere)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (code is None or error["code"] == code), error
    return error


def keep_tiny_busy(pool: ThreadPoolExecutor, url: str) -> Future:
    """A long transcription on tiny.en, in progress when this returns (its future)."""
    long_audio = encode(long_english_audio(repeats=1)[0], "flac")
    running = pool.submit(httpx.post, f"{url}/asr", content=long_audio, timeout=120)
    deadline = time.monotonic() + 20
    while metric(httpx.get(f"{url}/metrics").text,
                 'asrd_transcriptions_in_progress{model="tiny.en"}') == 0:  # fmt: skip
        assert time.monotonic() < deadline and not running.done()
        time.sleep(0.05)
    return running


def loaded(server: AsrdServer) -> list[str]:
    response = httpx.get(f"{server.url}/api/ps", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["models"]


def models(server: AsrdServer) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}


def test_the_served_models_are_listed_and_base_loads_on_demand(pair: AsrdServer) -> None:
    listed = models(pair)
    assert list(listed)[:2] == ["tiny.en", "base"]
    tiny, base = listed["tiny.en"], listed["base"]
    assert tiny["default"] and tiny["loaded"] and tiny["languages"] == ["en"]
    assert not base["default"] and not base["loaded"] and "fr" in base["languages"]
    assert base["tasks"] == ["transcribe", "translate"] and base["size_bytes"] > 100e6
    assert listed["whisper-1"]["alias_of"] == "tiny.en"  # the aliases mean MODEL_ID
    client = openai.OpenAI(base_url=f"{pair.url}/v1", api_key="unused", max_retries=0)
    french = client.audio.transcriptions.create(
        model="base", file=(FRENCH.name, FRENCH.read()), response_format="verbose_json"
    )
    assert french.language == "french" and wer(FRENCH.transcript, french.text) < 0.5
    assert models(pair)["base"]["loaded"] and set(loaded(pair)) == {"tiny.en", "base"}


def test_requests_alternate_between_the_models_on_every_api(pair: AsrdServer) -> None:
    client = openai.OpenAI(base_url=f"{pair.url}/v1", api_key="unused", max_retries=0)
    for model in ("tiny.en", "base", "Systran/faster-whisper-base", "whisper-1", "base"):
        text = client.audio.transcriptions.create(model=model, file=(JFK.name, JFK.read())).text
        assert wer(JFK.transcript, text) < 0.2, (model, text)
    # The seed's /asr, with ?model=; X-Model-ID says which one answered.
    for model, expected in (("base", "base"), (None, "tiny.en"), ("tiny.en", "tiny.en")):
        params = {"model": model} if model else {}
        response = httpx.post(f"{pair.url}/asr", params=params, content=JFK.read(), timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-ID"] == expected
        assert wer(JFK.transcript, response.json()["text"]) < 0.2
    # French through /asr on base; tiny.en can't take it.
    french = httpx.post(f"{pair.url}/asr", params={"model": "base", "language": "fr"},
                        content=FRENCH.read(), timeout=60)  # fmt: skip
    assert wer(FRENCH.transcript, french.json()["text"]) < 0.5
    assert_error(httpx.post(f"{pair.url}/asr", params={"language": "fr"}, content=b"x"), 400)
    # The task API: the `model` form field; the task says which model ran it.
    task_ids = {}
    for model in ("base", "tiny.en"):
        submitted = httpx.post(f"{pair.url}/api/v1/tasks", data={"model": model},
                               files={"file": (JFK.name, JFK.read())})  # fmt: skip
        assert submitted.status_code == 202, submitted.text
        task_ids[model] = submitted.json()["task_id"]
    for model, task_id in task_ids.items():
        deadline = time.monotonic() + 60
        while (task := httpx.get(f"{pair.url}/api/v1/tasks/{task_id}").json())["status"] in (
            "pending",
            "processing",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert task["status"] == "finished" and task["used_model_size"] == model
        assert wer(JFK.transcript, task["result"]["text"]) < 0.2


def test_an_unknown_model_is_a_404_listing_the_served_ones(pair: AsrdServer) -> None:
    client = openai.OpenAI(base_url=f"{pair.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.audio.transcriptions.create(model="large-v3", file=(JFK.name, JFK.read()))
    message = excinfo.value.body["message"]  # type: ignore[index]
    assert "`tiny.en`, `base`" in message and "GET /v1/models" in message
    error = assert_error(
        httpx.post(f"{pair.url}/asr", params={"model": "small"}, content=JFK.read()), 404
    )
    assert error["code"] == "model_not_found" and "`base`" in error["message"]
    refused = httpx.post(f"{pair.url}/api/v1/transcribe", data={"model": "medium"},
                         files={"file": (JFK.name, JFK.read())})  # fmt: skip
    assert_error(refused, 404, "model_not_found")
    # A label per served model only: asking for others adds none.
    text = httpx.get(f"{pair.url}/metrics").text
    assert 'model="small"' not in text and 'asrd_model_loaded{model="base"}' in text


def test_a_model_unloads_on_its_own_ttl_while_the_other_serves(pair: AsrdServer) -> None:
    response = httpx.post(f"{pair.url}/asr", params={"model": "base"}, content=JFK.read(),
                          timeout=60)  # fmt: skip
    assert response.status_code == 200 and "base" in loaded(pair)
    deadline = time.monotonic() + BASE_TTL_S + 10
    while "base" in loaded(pair):
        # tiny.en keeps serving (and never unloads: UNLOAD_MODEL_AFTER_S is unset).
        answer = httpx.post(f"{pair.url}/asr", content=CLIPS["en_timit_LDC93S1.wav"].read(),
                            timeout=60)  # fmt: skip
        assert answer.status_code == 200
        assert time.monotonic() < deadline, "base never unloaded"
        time.sleep(0.5)
    assert loaded(pair) == ["tiny.en"]
    assert f"model unloaded after {BASE_TTL_S:.1f} s idle: base" in pair.log()
    text = httpx.get(f"{pair.url}/metrics").text
    assert metric(text, 'asrd_model_loaded{model="base"}') == 0
    assert metric(text, 'asrd_model_loaded{model="tiny.en"}') == 1


def test_eight_clients_over_both_models(pair: AsrdServer) -> None:
    names = ("en_jfk_inaugural_1961.flac", "en_ls_1272-128104-0000.wav",
             "en_cmuarctic_a0024.wav", "en_riva_what_is_nlp.wav")  # fmt: skip
    clips = [CLIPS[name] for name in names]

    def ask(index: int) -> tuple[str, float]:
        clip, model = clips[index % len(clips)], ("tiny.en", "base")[index % 2]
        response = httpx.post(f"{pair.url}/v1/audio/transcriptions", data={"model": model},
                              files={"file": (clip.name, clip.read())}, timeout=120)  # fmt: skip
        assert response.status_code == 200, response.text
        return model, wer(clip.transcript, response.json()["text"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(16)))
    assert {model for model, _ in results} == {"tiny.en", "base"}
    assert all(error < 0.25 for _, error in results), results


def test_management_needs_an_admin(pair: AsrdServer) -> None:
    for method, path in (("GET", "/api/ps"), ("POST", "/api/ps/base"), ("DELETE", "/api/ps/base"),
                         ("POST", "/v1/models/base"), ("DELETE", "/v1/models/base")):  # fmt: skip
        refused(httpx.request(method, f"{pair.url}{path}"), 401)
        wrong = httpx.request(method, f"{pair.url}{path}", headers={"X-API-Key": "nope"})
        refused(wrong, 403)
    # Listing stays OpenAI's, open to clients.
    assert httpx.get(f"{pair.url}/v1/models").status_code == 200


def test_admins_load_and_unload(pair: AsrdServer) -> None:
    url = pair.url
    loaded_now = httpx.post(f"{url}/api/ps/base", headers=ADMIN, timeout=60)
    assert loaded_now.status_code == 200 and loaded_now.json()["status"] in (
        "loaded",
        "already_loaded",
    )
    assert "base" in loaded(pair)
    assert httpx.delete(f"{url}/api/ps/base", headers=ADMIN).json()["status"] == "unloaded"
    assert "base" not in loaded(pair)
    assert httpx.delete(f"{url}/api/ps/base", headers=ADMIN).json()["status"] == "not_loaded"
    assert_error(httpx.post(f"{url}/api/ps/large-v3", headers=ADMIN), 404, "model_not_found")
    # In use: 409, and the transcription is not disturbed.
    with ThreadPoolExecutor(1) as pool:
        running = keep_tiny_busy(pool, url)
        assert_error(httpx.delete(f"{url}/api/ps/tiny.en", headers=ADMIN), 409, "model_in_use")
        assert running.result().status_code == 200
    # A model on disk: a bundled one needs no download; a local directory is not asrd's.
    fetched = httpx.post(f"{url}/v1/models/tiny.en", headers=ADMIN, timeout=60)
    assert fetched.status_code == 201, fetched.text
    refused(httpx.delete(f"{url}/v1/models/tiny.en", headers=ADMIN), 409, "model_in_use")
    refused(httpx.post(f"{url}/v1/models/not-a-model", headers=ADMIN), 400)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("one-at-a-time") / "asrd.log"
    env = {**SERVER_ENV, "MODELS": "base", "MAX_LOADED_MODELS": "1", "ADMIN_API_KEYS": "admin-key"}
    with AsrdServer(env, log_path) as instance:
        yield instance


def test_the_least_recently_used_idle_model_is_evicted(one_at_a_time: AsrdServer) -> None:
    url = one_at_a_time.url
    assert loaded(one_at_a_time) == ["tiny.en"]
    base = httpx.post(f"{url}/asr", params={"model": "base"}, content=JFK.read(), timeout=60)
    assert base.status_code == 200 and wer(JFK.transcript, base.json()["text"]) < 0.2
    assert loaded(one_at_a_time) == ["base"]
    assert "unloading tiny.en (least recently used) to make room for base" in one_at_a_time.log()
    tiny = httpx.post(f"{url}/asr", content=JFK.read(), timeout=60)
    assert tiny.status_code == 200 and loaded(one_at_a_time) == ["tiny.en"]


def test_no_room_while_the_loaded_model_is_busy_is_a_503(one_at_a_time: AsrdServer) -> None:
    url = one_at_a_time.url
    with ThreadPoolExecutor(1) as pool:
        running = keep_tiny_busy(pool, url)
        refused = httpx.post(f"{url}/asr", params={"model": "base"}, content=JFK.read())
        error = assert_error(refused, 503, "model_not_ready")
        assert "MAX_LOADED_MODELS" in error["message"] and refused.headers["Retry-After"]
        assert running.result().status_code == 200
    assert loaded(one_at_a_time) == ["tiny.en"]


def test_the_cli_picks_a_model(pair: AsrdServer, tmp_path: Path) -> None:
    audio = tmp_path / "french.wav"
    audio.write_bytes(FRENCH.read())
    result = subprocess.run(
        [sys.executable, "-m", "asrd", "transcribe", "--server", pair.url, "--model", "base",
         str(audio)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert wer(FRENCH.transcript, (tmp_path / "french.txt").read_text()) < 0.5


def test_decoder_status_reports_every_model(pair: AsrdServer) -> None:
    status = httpx.get(f"{pair.url}/api/v1/decoder_status").json()
    assert status["model"] == "tiny.en" and status["max_model_to_use"] == "tiny.en"
    assert [m["model"] for m in status["models"]] == ["tiny.en", "base"]
    assert status["models"][1]["ttl_s"] == BASE_TTL_S


def test_slow_loads_are_bounded(tmp_path: Path) -> None:
    """A request waits at most MODEL_LOAD_TIMEOUT_S for its model; the load goes on."""
    env = {**SERVER_ENV, "MODELS": "base", "MODEL_LOAD_TIMEOUT_S": "0.01",
           "CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        refused = httpx.post(f"{server.url}/asr", params={"model": "base"}, content=JFK.read())
        error = assert_error(refused, 503, "model_not_ready")
        assert "MODEL_LOAD_TIMEOUT_S" in error["message"]
        deadline = time.monotonic() + 60
        while not models(server)["base"]["loaded"]:
            assert time.monotonic() < deadline, "the load stopped with the request"
            time.sleep(0.2)
