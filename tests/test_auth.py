"""API keys: every API route needs one when API_KEYS is set; health and metrics stay open."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
KEYS = ("first-key-0123456789", "second-key-9876543210")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    env = {**SERVER_ENV, "API_KEYS": ",".join(KEYS)}
    server = AsrdServer(env, tmp_path_factory.mktemp("auth") / "asrd.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_api_routes_need_a_key(secured: AsrdServer) -> None:
    url = secured.url
    for response in (
        httpx.post(f"{url}/asr", content=JFK.read()),
        httpx.post(f"{url}/asr", content=JFK.read(), headers={"Authorization": "Bearer nope"}),
        httpx.post(f"{url}/api/v1/transcribe", files={"file": ("a.flac", JFK.read())}),
        httpx.get(f"{url}/api/v1/tasks/abc"),
        httpx.get(f"{url}/api/v1/decoder_status"),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    v1 = httpx.get(f"{url}/v1/models")
    assert v1.status_code == 401 and v1.json()["error"]["type"] == "invalid_request_error"


def test_either_header_and_any_key_works(secured: AsrdServer) -> None:
    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}):
        response = httpx.post(f"{secured.url}/asr", content=JFK.read(), headers=headers, timeout=60)
        assert response.status_code == 200
        assert wer(JFK.transcript, response.json()["text"]) <= 0.15


def test_openai_client_with_its_api_key(secured: AsrdServer) -> None:
    with openai.OpenAI(base_url=f"{secured.url}/v1", api_key=KEYS[0], max_retries=0) as client:
        result = client.audio.transcriptions.create(model="whisper-1", file=(JFK.name, JFK.read()))
        assert wer(JFK.transcript, result.text) <= 0.15
    wrong = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_health_metrics_and_page_stay_open(secured: AsrdServer) -> None:
    for path in ("/hc", "/metrics", "/", "/static/app.js", "/openapi.json"):
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path


def test_protected_health_and_metrics(tmp_path: Path) -> None:
    env = {**SERVER_ENV, "API_KEYS": KEYS[0], "PROTECT_HEALTH": "1", "PROTECT_METRICS": "1"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        # wait_ready polls /hc without a key: poll with one here.
        deadline = time.monotonic() + 60
        headers = {"X-API-Key": KEYS[0]}
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}/hc", headers=headers).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/hc").status_code == 401
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 200
    finally:
        server.stop()
