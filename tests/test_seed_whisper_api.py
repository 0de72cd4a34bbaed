"""asrd as a drop-in for MayNiklas/whisper_api: its clients, unchanged, against a real
`asrd serve` (tiny.en; the multilingual `base` for translation) and real speech.

Three clients of the seed are replayed here call for call: its own test suite
(`test/test_api.py`, `test/test_frontend.py`), its web page's script (submit, poll
`status?task_id=` every second until `finished`, show `transcript`, open the srt), and the
client of its NixOS VM test (wait for `is_model_loaded`, submit, poll, read `transcript`),
with the URLs, fields and status codes they use. (The page itself, in a browser, is in
test_web.py.) Then the seed's other routes and settings: `userinfo` and `login` behind an
authenticating proxy, `decoder_status_refresh`, LOG_LEVEL_CONSOLE / LOG_LEVEL_FILE."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from asrd.config import Settings
from asrd.logs import setup_logging

from conftest import CLIPS, SERVER_ENV, AsrdServer, wer

# The seed's test file is an English .ogg; this is real speech in the same container.
OGG = CLIPS["en_ls_1089-134686-0001_transcoded.ogg"]
SHORT = CLIPS["en_timit_LDC93S1.wav"]
FRENCH = CLIPS["fr_picovoice_test_fr.wav"]
SEED_TASK_FIELDS = {
    "task_id", "task_type", "status", "time_uploaded", "transcript", "source_language",
    "position_in_queue", "processing_duration", "time_processing_finished",
    "target_model_size", "used_model_size", "used_device",
}  # fmt: skip
SEED_DECODER_FIELDS = {
    "gpu_mode", "max_model_to_use", "last_loaded_model_size", "is_model_loaded",
    "tasks_in_queue", "currently_busy", "received_at",
}  # fmt: skip


@pytest.fixture(scope="module")
def seed_client(server: AsrdServer) -> Iterator[httpx.Client]:
    """As the seed's test suite makes it: a base URL, no default timeout of its own."""
    with httpx.Client(base_url=server.url) as client:
        yield client


# --- the seed's test suite (test/test_api.py), call for call ---------------------------------

POST_TIMEOUT_S = 30
STATUS_REQUEST_TIMEOUT_S = 10
TRANSCRIPTION_DEADLINE_S = 120


def run_transcription_and_wait(
    client: httpx.Client, path: Path, endpoint: str = "/api/v1/transcribe"
) -> dict:
    """The seed's `_run_transcription_and_wait`: upload the open file as `file`, expect 200
    and a task_id, poll `status?task_id=` (each answer 200) until `finished`. (It polls once a
    second; here every 0.1 s, to keep the test short.)"""
    with path.open("rb") as file:
        response = client.post(endpoint, files={"file": file}, timeout=POST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    task_id = response.json().get("task_id")
    assert task_id is not None
    deadline = time.time() + TRANSCRIPTION_DEADLINE_S
    while time.time() < deadline:
        status = client.get(f"/api/v1/status?task_id={task_id}", timeout=STATUS_REQUEST_TIMEOUT_S)
        assert status.status_code == 200, status.text
        payload = status.json()
        if payload.get("status") == "finished":
            return payload
        assert payload.get("status") in ("pending", "processing"), payload
        time.sleep(0.1)
    pytest.fail(f"transcription did not complete within {TRANSCRIPTION_DEADLINE_S} s")


def test_version(seed_client: httpx.Client) -> None:
    response = seed_client.get("/api/v1/version")
    assert response.status_code == 200
    assert "version" in response.json()


def test_4_loaded_model(seed_client: httpx.Client) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        response = seed_client.get("/api/v1/decoder_status")
        if response.json().get("is_model_loaded") is True:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the model did not load within 120 s")
    assert response.json().get("is_model_loaded")


def test_status_invalid_task_id(seed_client: httpx.Client) -> None:
    response = seed_client.get("/api/v1/status?task_id=00000000000000000000000000000000")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "task_not_found"  # asrd says why, as JSON


def test_transcribe_non_audio_file(seed_client: httpx.Client) -> None:
    files = {"file": ("test.txt", b"this is not audio", "text/plain")}
    response = seed_client.post("/api/v1/transcribe", files=files, timeout=POST_TIMEOUT_S)
    assert response.status_code == 400


def test_transcribe(seed_client: httpx.Client) -> None:
    result = run_transcription_and_wait(seed_client, OGG.path)
    assert result.get("status") == "finished"
    assert result.get("transcript") is not None and len(result.get("transcript")) > 0
    # What the seed's suite can't check: the words are right, and every field it has is there.
    assert wer(OGG.transcript, result["transcript"]) <= 0.25, result["transcript"]
    assert set(result) >= SEED_TASK_FIELDS
    assert result["source_language"] == "en" and result["task_type"] == "transcribe"
    assert result["used_model_size"] == "tiny.en" and result["used_device"] == "cpu"
    datetime.fromisoformat(result["time_uploaded"])
    assert datetime.fromisoformat(result["time_processing_finished"]) >= datetime.fromisoformat(
        result["time_uploaded"]
    )
    assert result["processing_duration"] >= 0
    assert result["result"]["text"] == result["transcript"]  # asrd's own fields stay beside


def test_translate(base_server: AsrdServer) -> None:
    """The seed translates with whatever model it serves; asrd's English-only models can't
    (next test), so this runs on the multilingual `base`, with French speech."""
    with httpx.Client(base_url=base_server.url) as client:
        result = run_transcription_and_wait(client, FRENCH.path, endpoint="/api/v1/translate")
    assert result.get("status") == "finished"
    assert result.get("transcript") is not None and len(result.get("transcript")) > 0
    assert result["task_type"] == "translate" and result["source_language"] == "fr"
    words = set(result["transcript"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "of", "and", "in", "is", "was", "a", "it", "he"}, result["transcript"]


def test_translate_on_an_english_only_model_is_refused(seed_client: httpx.Client) -> None:
    """Where asrd differs on purpose: the seed would queue it; an English-only model can't
    translate, so asrd says so at once (400) instead of returning an English transcript."""
    with OGG.path.open("rb") as file:
        response = seed_client.post("/api/v1/translate", files={"file": file})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_task" and "English-only" in error["message"]


def test_stability(seed_client: httpx.Client) -> None:
    """The seed's stability loop (20 runs there; 20 queued tasks in test_tasks.py)."""
    failures = []
    for run in range(5):
        try:
            result = run_transcription_and_wait(seed_client, SHORT.path)
            assert result.get("status") == "finished"
            assert result.get("transcript") is not None and len(result.get("transcript")) > 0
        except AssertionError as exc:
            failures.append(f"run {run + 1}: {exc}")
    assert not failures


# --- the seed's test suite (test/test_frontend.py) ---------------------------------------------


def test_frontend_files(server: AsrdServer) -> None:
    """The seed's page names serve asrd's page and assets, with the types its tests want."""
    page = httpx.get(f"{server.url}/index.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text == httpx.get(f"{server.url}/").text  # asrd's page
    script = httpx.get(f"{server.url}/script.js")
    assert script.status_code == 200
    assert script.headers["content-type"] in (
        "text/javascript; charset=utf-8",
        "application/javascript",
    )
    assert script.content == httpx.get(f"{server.url}/static/app.js").content
    styles = httpx.get(f"{server.url}/styles.css")
    assert styles.status_code == 200
    assert styles.headers["content-type"] == "text/css; charset=utf-8"
    assert styles.content == httpx.get(f"{server.url}/static/style.css").content
    assert httpx.get(f"{server.url}/not_found").status_code == 404


# --- the seed's web page's script, as HTTP calls (the browser run is in test_web.py) ---------


def test_the_seed_pages_calls(seed_client: httpx.Client) -> None:
    """Its `transcribe()`: POST the FormData `file` (with its name), read `task_id` from the
    JSON, poll `status?task_id=` until `status === "finished"`, show `transcript`; then its
    `downloadSrt()` opens `srt?task_id=`. It reads no status code: only the JSON."""
    with SHORT.path.open("rb") as file:
        data = seed_client.post("/api/v1/transcribe", files={"file": (SHORT.name, file)}).json()
    task_id = data["task_id"]
    deadline = time.time() + TRANSCRIPTION_DEADLINE_S
    while (data := seed_client.get(f"/api/v1/status?task_id={task_id}").json())[
        "status"
    ] != "finished":
        assert time.time() < deadline, data
        time.sleep(0.1)
    assert isinstance(data["transcript"], str)  # the page showed "undefined" before
    assert wer(SHORT.transcript, data["transcript"]) <= 0.3, data["transcript"]
    srt = seed_client.get(f"/api/v1/srt?task_id={task_id}")
    assert srt.status_code == 200 and "-->" in srt.text
    assert srt.headers["content-disposition"].startswith("attachment;")
    assert wer(SHORT.transcript, srt.text.split("\n", 2)[2]) <= 0.3


def test_srt_before_the_result_is_400(seed_client: httpx.Client) -> None:
    """The seed's code for a download of a task that has not finished (asrd's own
    /api/v1/tasks/{id}/srt says 409). The second task waits behind the first (FIFO), so it is
    pending when its srt is asked for."""
    ids = []
    for _ in range(2):
        with OGG.path.open("rb") as file:
            ids.append(seed_client.post("/api/v1/transcribe", files={"file": file}).json())
    waiting = ids[1]["task_id"]
    response = seed_client.get(f"/api/v1/srt?task_id={waiting}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "task_not_finished"
    assert seed_client.get(f"/api/v1/tasks/{waiting}/srt").status_code == 409
    assert seed_client.get(f"/api/v1/srt?task_id={'0' * 32}").status_code == 400
    for task in ids:
        seed_client.delete(f"/api/v1/tasks/{task['task_id']}")


# --- a deployment as the seed's NixOS module makes it, and its VM test's client ---------------

PROXY_USER = {
    "X-Forwarded-User": "nik",
    "X-Forwarded-Email": "nik@example.com",
    "X-Forwarded-Preferred-Username": "Nik",
}


@pytest.fixture(scope="module")
def nixos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    """The environment of the seed's NixOS module (`services.whisper_api` with the VM test's
    `listen = "0.0.0.0"; maxModel = "base"`; PORT is the free port the fixture picks), behind
    an authenticating proxy on loopback (TRUSTED_PROXIES) that sets the user's headers, with
    log files whose level differs from the console's."""
    root = tmp_path_factory.mktemp("nixos")
    env = {
        **SERVER_ENV,
        "LISTEN": "0.0.0.0",
        "MAX_MODEL": "base",
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "AUTHORIZED_MAILS": "nik@example.com",
        "LOG_DIR": str(root / "logs"),
        "LOG_LEVEL": "INFO",
        "LOG_LEVEL_CONSOLE": "WARNING",
        "LOG_LEVEL_FILE": "DEBUG",
    }
    with AsrdServer(env, root / "console.log", cwd=root) as instance:
        yield instance


def test_the_nixos_vm_tests_client(nixos_server: AsrdServer) -> None:
    """Its script: wait until `decoder_status` says `is_model_loaded`, POST the file to
    `transcribe` (reading the JSON, not the code), poll `status?task_id=` until `finished`,
    log `transcript`."""
    url = f"http://127.0.0.1:{nixos_server.port}/api/v1/"
    deadline = time.time() + 120
    while httpx.get(url + "decoder_status").json()["is_model_loaded"] is not True:
        assert time.time() < deadline
        time.sleep(0.2)
    with OGG.path.open("rb") as file:
        r = httpx.post(url + "transcribe", files={"file": file}).json()
    while (reply := httpx.get(url + "status?task_id=" + r["task_id"]).json())[
        "status"
    ] != "finished":
        assert time.time() < deadline, reply
        time.sleep(0.2)
    assert wer(OGG.transcript, reply["transcript"]) <= 0.25, reply["transcript"]


def test_decoder_status_has_the_seeds_fields_and_what_the_model_can_do(
    seed_client: httpx.Client, base_server: AsrdServer
) -> None:
    status = seed_client.get("/api/v1/decoder_status").json()
    assert set(status) >= SEED_DECODER_FIELDS
    assert status["gpu_mode"] is False and status["is_model_loaded"] is True
    assert status["max_model_to_use"] == status["last_loaded_model_size"] == "tiny.en"
    assert isinstance(status["tasks_in_queue"], int)
    assert isinstance(status["currently_busy"], bool)
    assert status["model_loaded"] is True  # asrd's name stays
    assert status["multilingual"] is False and status["english_only"] is True
    assert status["tasks"] == ["transcribe"] and status["languages"] == ["en"]

    refreshed = seed_client.get("/api/v1/decoder_status_refresh")
    assert refreshed.status_code == 200
    assert refreshed.json() == "Request to refresh state is sent to decoder"
    after = seed_client.get("/api/v1/decoder_status").json()["received_at"]
    assert datetime.fromisoformat(after) >= datetime.fromisoformat(status["received_at"])

    multilingual = httpx.get(f"{base_server.url}/api/v1/decoder_status").json()
    assert multilingual["multilingual"] is True and multilingual["english_only"] is False
    assert multilingual["tasks"] == ["transcribe", "translate"]
    assert {"en", "fr", "de"} <= set(multilingual["languages"])
    assert multilingual["max_model_to_use"] == "base"


# --- behind an authenticating proxy: userinfo and login ----------------------------------------


def test_userinfo_believes_only_a_trusted_proxy(
    nixos_server: AsrdServer, server: AsrdServer
) -> None:
    trusted = httpx.get(
        f"{nixos_server.url}/api/v1/userinfo", headers={**PROXY_USER, "User-Agent": "probe/1"}
    )
    assert trusted.status_code == 200
    assert trusted.json() == {
        "user": "nik",
        "email": "nik@example.com",
        "preferred_username": "Nik",
        "authenticated": True,
        "user_agent": "probe/1",
    }
    # nginx with auth_request passes the seed's X-Email / X-User.
    nginx = httpx.get(
        f"{nixos_server.url}/api/v1/userinfo", headers={"X-Email": "a@b.c", "X-User": "a"}
    ).json()
    assert (nginx["email"], nginx["user"], nginx["authenticated"]) == ("a@b.c", "a", True)
    anonymous = httpx.get(f"{nixos_server.url}/api/v1/userinfo").json()
    assert anonymous["authenticated"] is False and anonymous["email"] is None

    # A server with no TRUSTED_PROXIES believes no one: anybody can send these headers.
    forged = httpx.get(
        f"{server.url}/api/v1/userinfo", headers={**PROXY_USER, "X-Email": "admin@example.com"}
    ).json()
    assert forged["user"] is None and forged["email"] is None
    assert forged["preferred_username"] is None and forged["authenticated"] is False


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, "/"),
        ("/", "/"),
        ("/index.html", "/index.html"),
        ("/app/?tab=2#top", "/app/?tab=2#top"),
        ("https://evil.example/", "/"),
        ("http:evil.example", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        (" //evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("", "/"),
    ],
)
def test_login_redirects_only_within_this_server(
    seed_client: httpx.Client, server: AsrdServer, target: str | None, expected: str
) -> None:
    params = {} if target is None else {"redirect": target}
    response = seed_client.get("/api/v1/login", params=params)
    assert response.status_code == 307
    location = response.headers["location"]
    assert location == expected
    # Wherever a browser resolves it, it stays on this server.
    assert (
        urlsplit(urljoin(server.url + "/api/v1/login", location)).netloc
        == urlsplit(server.url).netloc
    )


# --- LOG_LEVEL_CONSOLE and LOG_LEVEL_FILE --------------------------------------------------------


def test_console_and_file_log_levels_end_to_end(nixos_server: AsrdServer) -> None:
    """Console at WARNING, files at DEBUG: a request's access line (INFO) is in the file only."""
    httpx.get(f"{nixos_server.url}/api/v1/version")
    log_file = nixos_server.log_path.parent / "logs" / "asrd.log"
    deadline = time.time() + 5
    while "GET /api/v1/version 200" not in log_file.read_text() and time.time() < deadline:
        time.sleep(0.1)
    assert "INFO asrd.access: GET /api/v1/version 200" in log_file.read_text()
    console = nixos_server.log()
    assert " INFO " not in console and "asrd.access" not in console, console


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("env", "console_level", "file_level"),
    [
        ({}, "INFO", "INFO"),
        ({"log_level": "DEBUG"}, "DEBUG", "DEBUG"),
        ({"log_level_console": "ERROR"}, "ERROR", "INFO"),
        ({"log_level": "WARNING", "log_level_file": "DEBUG"}, "WARNING", "DEBUG"),
        ({"log_level_console": "debug", "log_level_file": "critical"}, "DEBUG", "CRITICAL"),
    ],
)
def test_log_levels_per_handler(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: dict,
    console_level: str,
    file_level: str,
) -> None:
    setup_logging(Settings(log_dir=tmp_path, **env))
    log = logging.getLogger("asrd.test")
    for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        log.log(logging.getLevelName(level), "line at %s", level)
    for handler in logging.getLogger().handlers:
        handler.flush()
    order = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

    def expected(threshold: str) -> list[str]:
        return [f"line at {level}" for level in order[order.index(threshold) :]]

    def written(text: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in text.splitlines() if "asrd.test" in line]

    assert written(capsys.readouterr().err) == expected(console_level)
    assert written((tmp_path / "asrd.log").read_text()) == expected(file_level)
