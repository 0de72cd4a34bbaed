"""Hostile uploads against a real `asrd serve`: files that are not audio (a playlist naming a
server file, SDP, SBaGen), decompression bombs against the decoded-audio budget, damaged and
chained files, many channels, deep JSON. Everything is built at test time; loopback only."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import CLIPS, SERVER_ENV, AsrdServer, assert_error, decode_pcm, metric, wer
from hostile_audio import (
    SBAGEN,
    concat_playlist,
    encode,
    multichannel_wav,
    overwritten,
    sdp,
    silence_flac,
    with_garbage,
)

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
WEATHER = CLIPS["en_ms_whats_the_weather_like.wav"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's working directory: a real clip a playlist could name, and a FIFO canary
    (opening it for reading would hang a decoding thread)."""
    root = tmp_path_factory.mktemp("server-cwd")
    (root / "secret.wav").write_bytes(WEATHER.read())
    os.mkfifo(root / "canary")
    return root


@pytest.fixture(scope="module")
def hostile(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("logs-hostile") / "asrd.log"
    with AsrdServer(SERVER_ENV, log_path, cwd=workdir) as instance:
        yield instance


@pytest.fixture(scope="module")
def http(hostile: AsrdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile.url, timeout=60) as client:
        yield client


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            found.add(os.readlink(fd))
    return found


def submit_task(http: httpx.Client, data: bytes) -> httpx.Response:
    return http.post("/api/v1/transcribe", files={"file": ("audio.wav", data)})


def openai(http: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
    return http.post(
        "/v1/audio/transcriptions",
        files={"file": ("audio.bin", data)},
        data={"model": "whisper-1", **fields},
    )


@pytest.mark.parametrize("name", ["secret.wav", "canary"])
def test_a_playlist_reads_no_server_file(
    hostile: AsrdServer, http: httpx.Client, workdir: Path, name: str
) -> None:
    playlist = concat_playlist(name)
    for response in (
        http.post("/asr", content=playlist),
        openai(http, playlist),
        submit_task(http, playlist),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]  # each API's own error shape
        assert error["code"] == "unsupported_format"
        assert "concat" in error["message"] and name not in error["message"]
    assert not any(path.startswith(str(workdir)) for path in open_files(hostile.process.pid))
    with pytest.raises(OSError):  # ENXIO: no reader ever opened the FIFO
        os.close(os.open(workdir / "canary", os.O_WRONLY | os.O_NONBLOCK))


def test_sdp_binds_no_port_and_sbagen_makes_no_audio(http: httpx.Client) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_error(http.post("/asr", content=sdp(port)), 400, "unsupported_format")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # still free: the server never listened on it
    error = assert_error(http.post("/asr", content=SBAGEN), 400, "unsupported_format")
    assert "sbg" in error["message"]


def test_garbage_inside_an_mp3_costs_no_words(http: httpx.Client) -> None:
    speech = np.tile(decode_pcm(JFK.read()), 3)  # 33 s: the garbage lands in the first third
    mp3 = encode(speech, "mp3", "libmp3lame")
    response = http.post("/asr", content=with_garbage(mp3, 0.1, os.urandom(400)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(33, abs=0.5)
    assert wer(" ".join([JFK.transcript] * 3), body["text"]) < 0.2
    assert "X-Audio-Warnings" not in response.headers


def test_audio_really_lost_is_reported(http: httpx.Client) -> None:
    speech = np.tile(decode_pcm(JFK.read()), 3)
    mp3 = encode(speech, "mp3", "libmp3lame")
    damaged = overwritten(mp3, 0.5, 60_000)  # ~4 s of audio zeroed
    response = http.post("/asr", content=damaged)
    assert response.status_code == 200, response.text
    assert "could be decoded" in response.headers["X-Audio-Warnings"]
    assert response.json()["warnings"] == [response.headers["X-Audio-Warnings"]]
    streamed = openai(http, damaged, response_format="json")
    assert "X-Audio-Warnings" in streamed.headers


def test_chained_ogg_is_transcribed_whole(http: httpx.Client) -> None:
    first = encode(decode_pcm(JFK.read()), "ogg", "flac", rate=44_100)
    second = encode(decode_pcm(WEATHER.read()), "ogg", "flac", rate=22_050)
    response = http.post("/asr", content=first + second, headers={"Content-Type": "audio/ogg"})
    assert response.status_code == 200, response.text
    assert wer(f"{JFK.transcript} {WEATHER.transcript}", response.json()["text"]) < 0.25


@pytest.mark.parametrize(("channels", "rate"), [(9, 96_000), (64, 16_000)])
def test_many_channels(http: httpx.Client, channels: int, rate: int) -> None:
    data = multichannel_wav(decode_pcm(WEATHER.read()), channels, rate)
    response = http.post("/asr", content=data)
    assert response.status_code == 200, response.text
    assert wer(WEATHER.transcript, response.json()["text"]) < 0.3


def test_deeply_nested_json_is_a_400(http: httpx.Client) -> None:
    body = b"[" * 50_000
    response = http.post("/asr", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert http.get("/hc").status_code == 200


# --- the decoded-audio budget ---------------------------------------------------------------

BUDGET_MB = 48


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("logs-budget") / "asrd.log"
    env = {**SERVER_ENV, "MAX_DECODED_AUDIO_MB": str(BUDGET_MB), "MAX_AUDIO_S": "10800"}
    with AsrdServer(env, log_path) as instance:
        yield instance


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmHWM")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def test_audio_larger_than_the_whole_budget_is_413(small_budget: AsrdServer) -> None:
    bomb = silence_flac(30 * 60)  # 58 MB decoded
    response = httpx.post(f"{small_budget.url}/asr", content=bomb, timeout=60)
    assert_error(response, 413, "audio_too_long")
    assert "MAX_DECODED_AUDIO_MB" in response.json()["error"]["message"]


def test_concurrent_bombs_stay_within_the_budget(small_budget: AsrdServer) -> None:
    """Four 12-minute silence bombs at once (23 MB decoded each, 48 MB of budget): each is
    answered 200 (nothing said) or 503 with Retry-After, never more memory than the budget;
    a short clip sent meanwhile is answered at once, and /hc stays fast."""
    pid = small_budget.process.pid
    bomb = silence_flac(12 * 60)
    baseline = rss_mb(pid)
    hc_times: list[float] = []
    stop = threading.Event()

    def watch_health() -> None:
        while not stop.is_set():
            started = time.monotonic()
            httpx.get(f"{small_budget.url}/hc", timeout=10)
            hc_times.append(time.monotonic() - started)
            time.sleep(0.2)

    def send(data: bytes) -> httpx.Response:
        return httpx.post(f"{small_budget.url}/asr", content=data, timeout=120)

    def timed(data: bytes) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        return send(data), time.monotonic() - started

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        with ThreadPoolExecutor(5) as pool:
            bombs = [pool.submit(send, bomb) for _ in range(4)]
            time.sleep(0.5)
            clip = pool.submit(timed, WEATHER.read())
            answers = [future.result() for future in bombs]
            short, short_s = clip.result()
    finally:
        stop.set()
        watcher.join()
    for response in answers:
        if response.status_code == 503:
            assert_error(response, 503, "server_busy")
            assert response.headers["Retry-After"]
        else:
            assert response.status_code == 200, response.text
            assert response.json()["text"] == ""
    # Long audio is decoded and searched for speech in its own lane: the clip doesn't wait.
    assert short.status_code == 200 and wer(WEATHER.transcript, short.json()["text"]) < 0.3
    assert short_s < 8, f"the short clip waited {short_s:.1f} s behind the bombs"
    used = 'asrd_memory_budget_used_bytes{budget="decoded_audio"}'
    deadline = time.monotonic() + 10  # every bomb's samples freed: the budget is empty again
    while metric(httpx.get(f"{small_budget.url}/metrics").text, used) > 0:
        assert time.monotonic() < deadline, "decoded audio still held after the requests"
        time.sleep(0.2)
    growth = peak_rss_mb(pid) - baseline
    assert growth < BUDGET_MB + 150, f"peak RSS {growth:.0f} MB over the idle server's"
    assert max(hc_times) < 1.0, f"/hc took up to {max(hc_times):.2f} s"


# --- uploads held in memory -------------------------------------------------------------------


def test_uploads_in_memory_are_bounded_server_wide(tmp_path: Path) -> None:
    """MAX_UPLOADS_IN_MEMORY_MB=10: while one 6 MB upload is in progress, a second is refused
    at once with 503 (before its body is read); once the first is gone, the room is back."""
    env = {**SERVER_ENV, "MAX_UPLOADS_IN_MEMORY_MB": "10"}
    with AsrdServer(env, tmp_path / "asrd.log") as server:
        body = silence_flac(1) + bytes(6 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", server.port)) as first:
            head = f"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            first.sendall(head.encode() + body[: 1024 * 1024])
            time.sleep(0.5)
            refused = httpx.post(f"{server.url}/asr", content=body, timeout=30)
            assert_error(refused, 503, "server_busy")
            assert refused.headers["Retry-After"]
            assert "MAX_UPLOADS_IN_MEMORY_MB" in refused.json()["error"]["message"]
        time.sleep(0.5)
        again = httpx.post(f"{server.url}/asr", content=body, timeout=30)
        assert again.status_code != 503, again.text


def test_a_task_reports_lost_audio(http: httpx.Client) -> None:
    mp3 = encode(np.tile(decode_pcm(JFK.read()), 3), "mp3", "libmp3lame")
    task_id = submit_task(http, overwritten(mp3, 0.5, 60_000)).json()["task_id"]
    deadline = time.monotonic() + 60
    while (status := http.get(f"/api/v1/tasks/{task_id}").json())["status"] != "finished":
        assert status["status"] in ("pending", "processing") and time.monotonic() < deadline
        time.sleep(0.2)
    assert len(status["warnings"]) == 1 and "could be decoded" in status["warnings"][0]
