"""The asynchronous task API end to end: real servers, real model, real speech."""

from __future__ import annotations

import email.message
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import srt
import webvtt

from conftest import CLIPS, SERVER_ENV, AsrdServer, encode, long_english_audio, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
LS = CLIPS["en_ls_1089-134686-0001.wav"]
SHORT_CLIPS = [
    "en_jfk_inaugural_1961.flac",
    "en_timit_LDC93S1.wav",
    "en_cmuarctic_a0024.wav",
    "en_ls_1089-134686-0001.wav",
    "en_riva_what_is_nlp.wav",
]


def submit(http: httpx.Client, clip_bytes: bytes, name: str = "a.wav", **form: str) -> dict:
    """Through the seed's route, which answers 200 (asrd's own, POST /api/v1/tasks, 202)."""
    response = http.post("/api/v1/transcribe", files={"file": (name, clip_bytes)}, data=form)
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(http: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/v1/tasks/{task_id}").json()
        if body["status"] in ("finished", "failed"):
            return body
        time.sleep(0.1)
    raise TimeoutError(task_id)


def wait_status(http: httpx.Client, task_id: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/v1/tasks/{task_id}").json()
        if body["status"] == status:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"{task_id} never {status}")


@pytest.fixture(scope="module")
def tasks_http(server: AsrdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


# --- the happy path -------------------------------------------------------------------------


def test_submit_poll_and_download(tasks_http: httpx.Client) -> None:
    created = submit(tasks_http, JFK.read(), name="Речь JFK.flac")
    assert created["status"] == "pending" and created["position_in_queue"] >= 1
    assert len(created["task_id"]) == 32 and created["task_type"] == "transcribe"
    assert created["transcript"] is None and created["result"] is None
    done = wait_done(tasks_http, created["task_id"])
    assert done["status"] == "finished" and done["error"] is None
    assert done["position_in_queue"] is None and done["file_name"] == "Речь JFK.flac"
    result = done["result"]
    assert wer(JFK.transcript, result["text"]) <= 0.15
    assert result["language"] == "en" and result["duration"] == pytest.approx(11.0, abs=0.05)
    assert all(s["start"] <= s["end"] for s in result["segments"])
    assert done["time_uploaded"] <= done["time_started"] <= done["time_finished"]
    assert done["processing_duration"] > 0 and done["expires_at"]
    # The seed's fields, beside asrd's.
    assert done["transcript"] == result["text"] and done["source_language"] == "en"
    assert done["time_processing_finished"] == done["time_finished"]
    assert done["target_model_size"] == done["used_model_size"] == "tiny.en"
    assert done["used_device"] == "cpu"
    # The seed's polling form gives the same task.
    seed_form = tasks_http.get("/api/v1/status", params={"task_id": created["task_id"]}).json()
    assert seed_form["result"] == result and seed_form["transcript"] == done["transcript"]

    params = {"task_id": created["task_id"]}
    srt_response = tasks_http.get("/api/v1/srt", params=params)
    assert srt_response.headers["content-type"] == "text/plain; charset=utf-8"
    disposition = srt_response.headers["content-disposition"]  # a non-latin-1 name is fine
    assert "filename*=UTF-8''%D0%A0%D0%B5%D1%87%D1%8C%20JFK_en.srt" in disposition
    cues = list(srt.parse(srt_response.text))
    assert wer(JFK.transcript, " ".join(c.content for c in cues)) <= 0.15
    vtt = webvtt.from_buffer(io.StringIO(tasks_http.get("/api/v1/vtt", params=params).text))
    assert len(vtt.captions) == len(cues)
    assert wer(JFK.transcript, tasks_http.get("/api/v1/txt", params=params).text) <= 0.15
    # asrd's resource form of the downloads serves the same files.
    for kind in ("srt", "vtt", "txt"):
        rest = tasks_http.get(f"/api/v1/tasks/{created['task_id']}/{kind}")
        seed = tasks_http.get(f"/api/v1/{kind}", params=params)
        assert rest.status_code == 200 and rest.text == seed.text
        assert rest.headers["content-disposition"] == seed.headers["content-disposition"]


def submit_raw_name(http: httpx.Client, file_name: bytes, data: bytes) -> httpx.Response:
    """Submit a form whose file name is sent byte for byte (httpx would percent-encode it)."""
    boundary = b"asrd-test-boundary"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + file_name + b'"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    )  # fmt: skip
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    return http.post("/api/v1/transcribe", content=body, headers={"Content-Type": content_type})


# RFC 6266 with the parameters asrd sends: a quoted ASCII fallback (qdtext: no `"`, no `\\`,
# no control characters) and the exact name as an RFC 5987 ext-value (attr-chars and %XX).
DISPOSITION = re.compile(
    r'attachment; filename="(?P<fallback>[ !#-\[\]-~]*)"; '
    r"(?P<extended>filename\*=UTF-8''(?:[A-Za-z0-9!#$&+.^_`|~-]|%[0-9A-F]{2})+)"
)


def parse_disposition(value: str) -> tuple[str, str | None]:
    """The fallback name and the exact name of a Content-Disposition, which must match the
    grammar; the exact name decoded by the mail parser (RFC 2231) as an independent reader."""
    match = DISPOSITION.fullmatch(value)
    assert match, value
    message = email.message.EmailMessage()
    message["Content-Disposition"] = "attachment; " + match["extended"]
    assert not message["Content-Disposition"].defects, value
    return match["fallback"], message.get_filename()


def test_hostile_file_names_download_with_a_valid_header(tasks_http: httpx.Client) -> None:
    clip = CLIPS["en_timit_LDC93S1.wav"]
    submitted = {  # file name sent -> the name the download must carry (before `_en.srt`)
        "raw": (b'a\x01b\nc\\"d\x1b[31m.wav', 'abc"d[31m'),  # control chars, LF, quote
        "utf-8": ("ü.wav".encode(), "ü"),
        "bidi": ("x\u202egpj.wav".encode(), "xgpj"),  # a right-to-left override
        "nul": (b"\x00\x01\x7f", "transcript"),  # nothing printable left
    }
    ids = {}
    for label, (name, _) in submitted.items():
        response = submit_raw_name(tasks_http, name, clip.read())
        assert response.status_code == 200, (label, response.text)
        ids[label] = response.json()["task_id"]
    # httpx percent-encodes CR, LF and quotes (as browsers do): kept as sent, harmless.
    ids["httpx"] = submit(tasks_http, clip.read(), name='a\x01b\r\nc"d.wav')["task_id"]
    expected = {label: stem for label, (_, stem) in submitted.items()}
    expected["httpx"] = "a%01b%0D%0Ac%22d"
    for label, task_id in ids.items():
        done = wait_done(tasks_http, task_id)
        assert done["status"] == "finished", done
        shown = done["file_name"]
        assert shown is None or all(c.isprintable() for c in shown), shown
        for kind in ("srt", "txt"):
            response = tasks_http.get(f"/api/v1/{kind}", params={"task_id": task_id})
            assert response.status_code == 200 and response.text.strip()
            header = response.headers["content-disposition"]
            assert header.isascii() and header.isprintable(), header
            fallback, file_name = parse_disposition(header)
            assert file_name == f"{expected[label]}_en.{kind}", (label, header)
            assert fallback.endswith(f"_en.{kind}"), header


def test_translate_on_multilingual_model(base_server: AsrdServer) -> None:
    """Through asrd's own route, POST /api/v1/tasks (202, Location), with `task=translate`."""
    french = CLIPS["fr_picovoice_test_fr.wav"]
    with httpx.Client(base_url=base_server.url, timeout=60) as http:
        response = http.post(
            "/api/v1/tasks",
            files={"file": ("fr.wav", french.read())},
            data={"language": "fr", "task": "translate"},
        )
        assert response.status_code == 202, response.text
        created = response.json()
        assert response.headers["location"] == f"/api/v1/tasks/{created['task_id']}"
        assert created["task_type"] == "translate" and created["status"] == "pending"
        done = wait_done(http, created["task_id"])
    assert done["task_type"] == "translate" and done["status"] == "finished"
    words = set(done["result"]["text"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "of", "and", "in", "is", "was", "a", "it"}, done["result"]["text"]
    assert done["transcript"] == done["result"]["text"] and done["source_language"] == "fr"
    assert done["used_model_size"] == "base"


# --- refused up front -----------------------------------------------------------------------


def test_bad_submissions_are_refused_at_once(tasks_http: httpx.Client) -> None:
    def post(data: bytes, **form: str) -> httpx.Response:
        return tasks_http.post("/api/v1/transcribe", files={"file": ("x.wav", data)}, data=form)

    for data, code in [(b"", "invalid_audio"), (b"this is text", "invalid_audio")]:
        response = post(data)
        assert response.status_code == 400 and response.json()["error"]["code"] == code
    bad_language = post(JFK.read(), language="xx")
    assert bad_language.status_code == 400
    assert bad_language.json()["error"]["code"] == "invalid_language"
    english_only = tasks_http.post(
        "/api/v1/transcribe?language=de", files={"file": ("x.flac", JFK.read())}
    )
    assert english_only.status_code == 400 and "English-only" in english_only.text
    for route, form in [("/api/v1/translate", {}), ("/api/v1/tasks", {"task": "translate"})]:
        refused = tasks_http.post(route, files={"file": ("x.flac", JFK.read())}, data=form)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "unsupported_task"
    bad_task = tasks_http.post(
        "/api/v1/tasks", files={"file": ("x.flac", JFK.read())}, data={"task": "summarise"}
    )
    assert bad_task.status_code == 422
    no_file = tasks_http.post("/api/v1/transcribe", data={"language": "en"})
    assert no_file.status_code == 422
    refused_callback = post(JFK.read(), callback_url="ftp://example.com/hook")
    assert refused_callback.status_code == 400
    assert refused_callback.json()["error"]["code"] == "invalid_callback_url"


def test_unknown_ids_are_404_on_asrd_routes_and_400_on_the_seeds(
    tasks_http: httpx.Client,
) -> None:
    for path in ("/api/v1/tasks/0123", "/api/v1/tasks/0123/srt", "/api/v1/tasks/0123/txt"):
        response = tasks_http.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"
    assert tasks_http.delete("/api/v1/tasks/abc").status_code == 404
    for seed_path in ("status", "srt", "vtt", "txt"):
        response = tasks_http.get(f"/api/v1/{seed_path}", params={"task_id": "nope"})
        assert response.status_code == 400, seed_path
        assert response.json()["error"]["code"] == "task_not_found"
    assert tasks_http.get("/api/v1/tasks/0123/pdf").status_code == 422


# --- queue behaviour: FIFO, failures, cancellation, full queue -----------------------------------


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    env = {**SERVER_ENV, "MAX_TASK_QUEUE_SIZE": "3", "MAX_AUDIO_S": "100"}
    server = AsrdServer(env, tmp_path_factory.mktemp("small-queue") / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http
    finally:
        server.stop()


@pytest.fixture(scope="module")
def long_audio() -> bytes:
    samples, _ = long_english_audio(repeats=1)  # ~77 s: several seconds of work
    return encode(samples, "flac")


def test_full_queue_is_429_at_once_and_failures_do_not_stop_the_worker(
    small_queue: httpx.Client, long_audio: bytes
) -> None:
    busy = submit(small_queue, long_audio)["task_id"]
    wait_status(small_queue, busy, "processing")
    too_long = encode(np.zeros(101 * 16000, np.float32), "mp3")  # over MAX_AUDIO_S
    failing = submit(small_queue, too_long, name="long.mp3")["task_id"]
    queued = [submit(small_queue, CLIPS[name].read())["task_id"] for name in SHORT_CLIPS[:2]]
    started = time.monotonic()
    refused = small_queue.post("/api/v1/transcribe", files={"file": ("x.flac", JFK.read())})
    assert refused.status_code == 429 and time.monotonic() - started < 1
    assert refused.headers["Retry-After"] and refused.json()["error"]["code"] == "queue_full"
    positions = [small_queue.get(f"/api/v1/tasks/{t}").json()["position_in_queue"] for t in
                 [failing, *queued]]  # fmt: skip
    assert positions == [1, 2, 3]

    failed = wait_done(small_queue, failing)
    assert failed["status"] == "failed" and failed["error"]["code"] == "audio_too_long"
    assert "MAX_AUDIO_S" in failed["error"]["message"] and failed["result"] is None
    for task_id, name in zip(queued, SHORT_CLIPS[:2], strict=True):
        done = wait_done(small_queue, task_id)
        assert done["status"] == "finished"
        assert wer(CLIPS[name].transcript, done["result"]["text"]) <= 0.3
    assert wait_done(small_queue, busy)["status"] == "finished"


def test_cancel_pending_and_running_tasks_and_drop_results(
    small_queue: httpx.Client, long_audio: bytes
) -> None:
    running = submit(small_queue, long_audio)["task_id"]
    wait_status(small_queue, running, "processing")
    pending = submit(small_queue, long_audio)["task_id"]
    after = submit(small_queue, JFK.read())["task_id"]

    cancelled = small_queue.delete(f"/api/v1/tasks/{pending}")
    assert cancelled.json() == {"task_id": pending, "status": "cancelled"}
    assert small_queue.get(f"/api/v1/tasks/{pending}").status_code == 404
    assert small_queue.get(f"/api/v1/tasks/{after}").json()["position_in_queue"] == 1

    stopped_at = time.monotonic()
    assert small_queue.delete(f"/api/v1/tasks/{running}").json()["status"] == "cancelled"
    assert small_queue.get(f"/api/v1/tasks/{running}").status_code == 404
    # The running task stops at its next window: the next task starts soon, not after ~77 s.
    wait_status(small_queue, after, "processing", timeout=20)
    assert time.monotonic() - stopped_at < 20
    done = wait_done(small_queue, after)
    assert wer(JFK.transcript, done["result"]["text"]) <= 0.15

    dropped = small_queue.delete(f"/api/v1/tasks/{after}")
    assert dropped.json() == {"task_id": after, "status": "deleted"}
    assert small_queue.get(f"/api/v1/tasks/{after}/srt").status_code == 404
    assert small_queue.get("/api/v1/srt", params={"task_id": after}).status_code == 400  # seed's


def test_download_before_finish_is_409_or_the_seeds_400(
    small_queue: httpx.Client, long_audio: bytes
) -> None:
    task_id = submit(small_queue, long_audio)["task_id"]
    for kind in ("srt", "vtt", "txt"):
        rest = small_queue.get(f"/api/v1/tasks/{task_id}/{kind}")
        assert rest.status_code == 409 and rest.json()["error"]["code"] == "task_not_finished"
        seed = small_queue.get(f"/api/v1/{kind}", params={"task_id": task_id})
        assert seed.status_code == 400 and seed.json()["error"]["code"] == "task_not_finished"
    small_queue.delete(f"/api/v1/tasks/{task_id}")


def test_ten_queued_tasks_finish_in_order(tasks_http: httpx.Client) -> None:
    clips = [CLIPS[SHORT_CLIPS[i % len(SHORT_CLIPS)]] for i in range(10)]
    ids = [submit(tasks_http, clip.read(), name=clip.name)["task_id"] for clip in clips]
    results = [wait_done(tasks_http, task_id) for task_id in ids]
    assert [r["status"] for r in results] == ["finished"] * 10
    starts = [r["time_started"] for r in results]
    assert starts == sorted(starts), "FIFO order not kept"
    for clip, result in zip(clips, results, strict=True):
        assert wer(clip.transcript, result["result"]["text"]) <= 0.3


# --- expiry ---------------------------------------------------------------------------------


def test_results_expire_whatever_the_read_pattern(tmp_path: Path) -> None:
    # 0.05 minutes = 3 s (reads 0.4 s apart keep it alive even on a loaded machine); lazy
    # expiry only (no sweeper), refreshed on read.
    env = {**SERVER_ENV, "DELETE_RESULTS_AFTER_M": "0.05", "RUN_RESULT_EXPIRY_CHECK_M": "0"}
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            first = submit(http, JFK.read())["task_id"]
            second = submit(http, LS.read())["task_id"]
            wait_done(http, first)
            wait_done(http, second)
            # Keep reading the first (older) one; the second, never read, must still expire.
            until = time.monotonic() + 4.5
            while time.monotonic() < until:
                assert http.get(f"/api/v1/tasks/{first}").status_code == 200
                time.sleep(0.4)
            assert http.get(f"/api/v1/tasks/{second}").status_code == 404
            assert http.get(f"/api/v1/tasks/{first}").status_code == 200
            time.sleep(3.5)
            assert http.get(f"/api/v1/tasks/{first}").status_code == 404
    finally:
        server.stop()


def test_sweeper_and_no_refresh(tmp_path: Path) -> None:
    env = {
        **SERVER_ENV,
        "DELETE_RESULTS_AFTER_M": "0.02",  # 1.2 s
        "REFRESH_EXPIRATION_TIME_ON_USAGE": "0",
        "RUN_RESULT_EXPIRY_CHECK_M": "0.005",  # a sweep every 0.3 s
    }
    server = AsrdServer(env, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            task_id = submit(http, JFK.read())["task_id"]
            wait_done(http, task_id)
            finished_at = time.monotonic()
            while time.monotonic() - finished_at < 1.0:  # reads don't extend its life
                assert http.get(f"/api/v1/tasks/{task_id}").status_code == 200
                time.sleep(0.2)
            time.sleep(0.8)  # past the 1.2 s, plus more than one sweep interval
            status = http.get("/api/v1/decoder_status").json()
            assert status["results_kept"] == 0
            assert http.get(f"/api/v1/tasks/{task_id}").status_code == 404
        assert "deleted 1 expired results" in server.log()
    finally:
        server.stop()


# --- callbacks ------------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_callback_gets_the_finished_task(tmp_path: Path) -> None:
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    server = AsrdServer({**SERVER_ENV, "ALLOW_PRIVATE_URLS": "1"}, tmp_path / "asrd.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            url = f"http://127.0.0.1:{hook.server_address[1]}/done"
            ok = submit(http, JFK.read(), callback_url=url)["task_id"]
            wait_done(http, ok)
            deadline = time.monotonic() + 10
            while not _Hook.received and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        server.stop()
        hook.shutdown()
    [posted] = _Hook.received
    assert posted["task_id"] == ok and posted["status"] == "finished"
    assert wer(JFK.transcript, posted["result"]["text"]) <= 0.15
