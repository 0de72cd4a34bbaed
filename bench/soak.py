"""Soak run: many requests of every kind, good, bad and hostile, against one live `asrd serve`.

    python bench/soak.py --requests 1000 --concurrency 8
    python bench/soak.py --requests 150 --seed 1                 # a short check
    python bench/soak.py --url http://host:8000 --pid 1234       # a running server (local pid)
    python bench/soak.py --cluster --tasks 120 --sync 60         # Redis, 2 API + 2 workers, kills

Sends N requests from C threads, a seeded mix of kinds (in proportions, then shuffled):
  36% valid: real English clips (some in the variant formats) to `POST /asr` (raw body) or
      `POST /v1/audio/transcriptions` (multipart, json); 200 and WER <= --max-wer is ok, a
      higher WER is `poor` when the text is still closest to its own clip's transcript
      (accuracy, reported) and `wrong` when it is closer to another clip's (a mix-up);
  12% damaged but decodable: an MP3 of speech with 400 random bytes 10% in, a chained Ogg/FLAC
      or MP3 (one clip at 44.1 kHz, then another at 22.05 kHz, bytes concatenated), 77 s of
      speech as MP3 with 40 KB zeroed in the middle; 200 with the words (the WER check of the
      valid kind; `wrong` when the text is closer to a part or a prefix of the audio: the
      decoding stopped at the damage), and for the zeroed one an `X-Audio-Warnings` header;
   8% corrupt: random bytes and a file cut inside its header (4xx, else wrong); a random
      prefix of a file, or a file with bytes flipped in its middle (200 or 4xx: both can
      still decode; a 200 must be a well-formed answer);
   8% non-audio formats FFmpeg would read: an ffconcat playlist, an SDP, an SBaGen script, SRT
      and WebVTT subtitles, a PNG (400 `unsupported_format`), an HLS or plain m3u playlist
      (400 `unsupported_format` or `invalid_audio`), to `/asr`, the OpenAI route and the task
      API (`POST /api/v1/transcribe`);
   8% bad parameters: unknown language, response_format, temperature out of range, word
      timestamps with json, unknown model, text as audio, ... (4xx, else wrong);
   6% oversize: bodies over MAX_UPLOAD_MB (8 MB, zeros) raw, chunked or multipart (413);
   6% disconnect: ~77 s of speech (flac) over a raw socket, closed 0.2-1 s after sending
      without reading the answer (the server should stop that work);
   6% JSON bombs to `/asr`: a 1 MB body, declared or chunked (413), `[` x 50000 and 10000
      nested objects (400; both under the 64 KB JSON cap), a 60 KB url or path string (4xx);
   4% slow uploads: a raw socket declares a 1 MB body and sends 1 byte every 2 s (to `/asr`,
      the OpenAI route or the task API): 408 or the connection closed by the server within
      20 s (MIN_UPLOAD_KB_S=8 after 10 s), else `wrong` (the request held its slot);
   4% idle connections: 4-12 sockets that send nothing, half a request line, half the headers,
      or the headers a byte a second: closed by the server (408 for a partial request) within
      HEADER_TIMEOUT_S (5 s here) + 5 s, else `wrong`;
   2% decompression bombs, at most 4 at once: FLAC of silence built here (3 h 16 kHz mono,
      1 h 44.1 kHz stereo, 20 min 48 kHz 6 channels; 0.5-2 MB each): 200 with empty text, 413,
      or 503 `server_busy` (the decoded-audio budget is full: counted as busy).
Every kind is in the warm-up (the first 10% of requests), and it sends each damaged variant and
each bomb once more (7 requests: the server's settled RSS moves up once after 77 s of speech in
one request or a many-channel decode, then stays). Any 5xx is an error (503 `server_busy` is
counted apart), an exception or timeout is lost.

First, two dedicated phases on the freshly started server: 4 bombs of 3 h of silence at once
(the server's peak RSS during them, VmHWM, must stay under 2 GB), then 300 idle connections held
at once (all closed by the server within HEADER_TIMEOUT_S + 5 s, its open fds back to their
count before them); then the warm-up (which settles the memory the phases left trimmed). A
separate thread requests `/hc` every 0.5 s for the whole run, each on a new connection (latency
p50/p99 per phase; every probe must get a 200 within 10 s).

The server (started here with MAX_UPLOAD_MB=8, MAX_AUDIO_S=10800, HEADER_TIMEOUT_S=5,
MIN_UPLOAD_KB_S=8, the default MAX_DECODED_AUDIO_MB, LOG_LEVEL=INFO and TMPDIR set to a fresh
directory; log in bench/results/soak.log) is measured at start, after the phases and the
warm-up, and at the end, each time after the clients have closed their connections, the server
is idle and 2 s have passed: RSS, open file descriptors, files in its TMPDIR. Pass: no 5xx, no
wrong answer, nothing lost, the server idle again within 30 s of the last request, RSS growth
after the warm-up under 10% (the allocator takes ~100 requests to settle: give short runs a
longer --warmup), at most 2 more open fds than after the warm-up (slack for a lazily opened log
or library file), no temp file created after the warm-up, and the phases' checks above. Exit
status 1 on FAIL. Writes bench/results/soak-<model>.json (`-peer` with --url; --out elsewhere).
A server given by --url must run with the settings above too; without --pid its RSS, fds and
TMPDIR are not checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from common import (
    CLIPS,
    RESULTS,
    AsrdServer,
    encode,
    long_english_audio,
    machine,
    reset_peak_rss,
    wer,
)

from conftest import decode_pcm, normalise
from hostile_audio import (
    HLS,
    SBAGEN,
    SUBTITLES,
    concat_playlist,
    overwritten,
    sdp,
    silence_flac,
    with_garbage,
)
from hostile_audio import encode as encode_as

VERDICTS = ("ok", "poor", "wrong", "5xx", "busy", "lost")
KINDS = {
    "valid": 0.36,
    "damaged": 0.12,
    "corrupt": 0.08,
    "format": 0.08,
    "bad": 0.08,
    "oversize": 0.06,
    "disconnect": 0.06,
    "json": 0.06,
    "slow": 0.04,
    "idle": 0.04,
    "bomb": 0.02,
}
VARIANT_TAGS = ("_transcoded", "_8k", "_44k", "law", "_16k")
ENGLISH = [c for c in CLIPS.values() if c.language == "en"]
BASE_CLIPS = [c for c in ENGLISH if not any(t in c.name for t in VARIANT_TAGS)]
VARIANT_CLIPS = [c for c in ENGLISH if any(t in c.name for t in VARIANT_TAGS)]
SHORT_CLIPS = [c for c in BASE_CLIPS if c.duration < 8]
SPEECH_CLIPS = [c for c in BASE_CLIPS if c.duration >= 5]  # the damaged kind's speech
UPLOAD_MB = 8
MIB = 1024 * 1024
# Over 8 MB: just over it, 9 MB (decimal), over 9 MiB, and well over.
OVERSIZE_BYTES = (UPLOAD_MB * MIB + 4096, 9_000_000, 9 * MIB + 4096, 12 * MIB)
HEADER_TIMEOUT_S = 5.0
MAX_AUDIO_S = 3 * 3600
SERVER_ENV = {
    "MAX_UPLOAD_MB": str(UPLOAD_MB),
    "MAX_AUDIO_S": str(MAX_AUDIO_S),
    "HEADER_TIMEOUT_S": f"{HEADER_TIMEOUT_S:g}",
    "MIN_UPLOAD_KB_S": "8",
    "LOG_LEVEL": "INFO",
}
IN_PROGRESS = "asrd_transcriptions_in_progress"
OPENAI = "/v1/audio/transcriptions"
TASKS = "/api/v1/transcribe"

# Decompression bombs: (seconds, sample rate, channels). The phase sends BOMB_PHASE ones at once.
BOMBS = {"3h 16k mono": (3 * 3600, 16_000, 1), "1h 44.1k stereo": (3600, 44_100, 2),
         "20min 48k 6ch": (1200, 48_000, 6)}  # fmt: skip
BOMB_PHASE = "3h 16k mono"
BOMBS_AT_ONCE = 4
BOMB_TIMEOUT_S = 600
MAX_BOMB_PHASE_RSS_MB = 2048
# Slow uploads: 1 byte every SLOW_BYTE_EVERY_S of a declared SLOW_BODY_BYTES; answered or
# closed within SLOW_ANSWER_S (408 after 10 s at MIN_UPLOAD_KB_S=8: the rest is slack).
SLOW_BODY_BYTES = 1_000_000
SLOW_BYTE_EVERY_S = 2.0
SLOW_ANSWER_S = 20.0
# Idle connections: what each sends at once, then a byte a second of the rest.
IDLE_VARIANTS = {
    "silent": (b"", b""),
    "half-line": (b"GET /hc HT", b""),
    "half-headers": (b"POST /asr HTTP/1.1\r\nHost: soak\r\nContent-Le", b""),
    "trickle": (b"GET /hc HTTP/1.1\r\n", b"X-Slow: " + b"a" * 120),
}
IDLE_SLACK_S = 5.0  # closed within HEADER_TIMEOUT_S + this
IDLE_SOCKETS = 300
# Playlists and other non-audio formats FFmpeg reads: the codes a 400 may have.
UNSUPPORTED = ("unsupported_format",)
UNDETECTED = ("unsupported_format", "invalid_audio")  # formats FFmpeg finds by file name only
# Sent once more each in the warm-up: they move the server's settled RSS up once (77 s of
# speech in one request, decoding many channels or high rates), which is not growth.
DAMAGED = ("garbage", "chained-ogg", "chained-mp3", "zeroed")
PRIMER = [("damaged", variant) for variant in DAMAGED] + [("bomb", name) for name in BOMBS]
HEALTH_EVERY_S = 0.5
HEALTH_TIMEOUT_S = 10.0


@dataclass
class Outcome:
    index: int
    kind: str
    variant: str
    route: str
    status: str = ""  # the HTTP status, "closed" (disconnect, closed by the server), or "lost"
    seconds: float = 0.0
    clip: str | None = None
    wer: float | None = None
    error_code: str | None = None
    problem: str | None = None  # why it is not ok
    verdict: str = "ok"  # one of VERDICTS
    detail: str | None = None  # what a raw-socket kind saw, a header that was expected


@dataclass
class Snapshot:
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    fds: int | None = None
    tmp_files: list[str] | None = None
    idle_after_s: float | None = None


@dataclass
class Held:
    """One connection held open by the client (idle kind and phase)."""

    variant: str
    sock: socket.socket | None
    opened: float
    trickle: bytes = b""  # still to send, a byte a second
    data: bytes = b""  # what the server sent
    closed_after_s: float | None = None  # None: still open at the limit (or never connected)
    error: str | None = None

    @property
    def status(self) -> int | None:
        return http_status(self.data)

    @property
    def label(self) -> str:
        """What happened to it: the HTTP status, `closed` (no answer), `open`, `no connection`."""
        if self.sock is None:
            return "no connection"
        if self.status is not None:
            return str(self.status)
        return "open" if self.closed_after_s is None else "closed"


def plan(total: int, seed: int, warmup: int | None) -> tuple[list[str], int]:
    """The kinds in order, and how many of them are the warm-up (each kind at least once)."""
    rng = random.Random(seed)
    counts = {kind: round(total * share) for kind, share in KINDS.items() if kind != "valid"}
    counts["valid"] = total - sum(counts.values())
    warmup = min(total, max(1, total // 10 if warmup is None else warmup))
    rest = [kind for kind, count in counts.items() for _ in range(count)]
    first = []
    if warmup >= len(KINDS):
        for kind in KINDS:
            if kind in rest:
                rest.remove(kind)
                first.append(kind)
    rng.shuffle(rest)
    head = first + rest[: warmup - len(first)]
    rng.shuffle(head)
    return head + rest[warmup - len(first) :], warmup


def error_code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def http_status(data: bytes) -> int | None:
    """The status of a raw HTTP response (None: nothing, or not HTTP)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    return int(match.group(1)) if match else None


def raw_error_code(data: bytes) -> str | None:
    """The `error.code` of a raw HTTP response's JSON body, if it came whole."""
    _, _, body = data.partition(b"\r\n\r\n")
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def png() -> bytes:
    """A real 1x1 PNG."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\0\0\0"))
        + chunk(b"IEND", b"")
    )


def non_audio(name: str, rng: random.Random) -> tuple[bytes, str, tuple[str, ...]]:
    """A non-audio input FFmpeg would read: its bytes, a file name, the accepted error codes."""
    if name == "ffconcat":
        target = rng.choice(["x.wav", "/etc/passwd", "soak.log", "http://127.0.0.1:1/x.wav"])
        return concat_playlist(target), "list.ffconcat", UNSUPPORTED
    if name == "sdp":
        return sdp(rng.randint(1024, 65000)), "stream.sdp", UNSUPPORTED
    if name == "sbagen":
        return SBAGEN, "beats.sbg", UNSUPPORTED
    if name == "srt":
        return SUBTITLES, "subtitles.srt", UNSUPPORTED
    if name == "webvtt":
        return b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhello\n", "subtitles.vtt", UNSUPPORTED
    if name == "png":
        return png(), "image.png", UNSUPPORTED
    if name == "hls":
        return HLS, "playlist.m3u8", UNDETECTED
    return b"#EXTM3U\n#EXTINF:-1,x\nhttp://127.0.0.1/x.wav\n", "list.m3u", UNDETECTED


NON_AUDIO = ("ffconcat", "sdp", "sbagen", "srt", "webvtt", "png", "hls", "m3u")


def prefixes(reference: str) -> dict[str, str]:
    """The reference's first 10-75% of words: a transcript that stopped at the damage."""
    words = normalise(reference).split()
    return {
        f"only the first {share:.0%} of the words": " ".join(words[: round(len(words) * share)])
        for share in (0.1, 0.25, 0.5, 0.75)
    }


def hold_connections(host: str, port: int, variants: list[str], limit_s: float) -> list[Held]:
    """Open one connection per variant, send what it sends, and wait for the server to close
    each one (recording what it answered), for at most `limit_s` after its opening."""
    held: list[Held] = []
    selector = selectors.DefaultSelector()
    for variant in variants:
        first, trickle = IDLE_VARIANTS[variant]
        opened = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=10)
            if first:
                sock.sendall(first)
            sock.setblocking(False)
        except OSError as exc:
            held.append(Held(variant, None, opened, error=f"{type(exc).__name__}: {exc}"))
            continue
        held.append(Held(variant, sock, opened, trickle))
        selector.register(sock, selectors.EVENT_READ, held[-1])

    def close(conn: Held, closed_by_server: bool) -> None:
        assert conn.sock is not None
        selector.unregister(conn.sock)
        conn.sock.close()
        if closed_by_server:
            conn.closed_after_s = time.monotonic() - conn.opened

    next_byte = time.monotonic() + 1.0
    try:
        while selector.get_map():
            open_ = [key.data for key in selector.get_map().values()]
            until = min(next_byte, min(conn.opened + limit_s for conn in open_))
            for key, _ in selector.select(max(0.0, until - time.monotonic())):
                conn = key.data
                try:
                    chunk = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""  # reset: closed too
                if chunk:
                    conn.data += chunk
                else:
                    close(conn, closed_by_server=True)
            now = time.monotonic()
            if now >= next_byte:
                next_byte = now + 1.0
                for key in list(selector.get_map().values()):
                    conn = key.data
                    if conn.trickle:
                        with contextlib.suppress(OSError):  # closed: the next recv says so
                            conn.sock.send(conn.trickle[:1])
                        conn.trickle = conn.trickle[1:]
            for key in list(selector.get_map().values()):
                if now - key.data.opened >= limit_s:
                    close(key.data, closed_by_server=False)
    finally:
        for key in list(selector.get_map().values()):
            key.data.sock.close()
        selector.close()
    return held


def judge_held(held: list[Held], limit_s: float) -> tuple[list[str], Counter]:
    """Problems with held connections (none: each closed by the server in time, a partial
    request answered 408 or nothing, a silent one nothing), and their statuses."""
    problems, statuses = [], Counter()
    for conn in held:
        status = conn.status
        statuses[conn.label] += 1
        if conn.sock is None:
            problems.append(f"{conn.variant}: could not connect: {conn.error}")
        elif conn.closed_after_s is None:
            problems.append(f"{conn.variant}: still open after {limit_s:g} s")
        elif status is not None and (status != 408 or conn.variant == "silent"):
            problems.append(f"{conn.variant}: answered {conn.data[:200]!r}")
        elif conn.data and status is None:
            problems.append(f"{conn.variant}: answered non-HTTP {conn.data[:200]!r}")
    return problems, statuses


class Soak:
    def __init__(self, url: str, model: str, seed: int, max_wer: float, timeout: float):
        self.url, self.model, self.seed = url.rstrip("/"), model, seed
        self.max_wer, self.timeout = max_wer, timeout
        parsed = httpx.URL(self.url)
        self.host, self.port = parsed.host, parsed.port or 80
        samples, reference = long_english_audio(repeats=1)
        self.long_flac = encode(samples, "flac")
        self.long_seconds = len(samples) / 16000
        # The damaged kind: the long speech as MP3 (zeroed), each clip as MP3 (garbage) and at
        # 44.1 and 22.05 kHz in Ogg/FLAC and MP3 (chained).
        self.long_mp3, self.long_reference = encode_as(samples, "mp3", "libmp3lame"), reference
        self.speech: dict[tuple[str, str, int], bytes] = {}
        for clip in SPEECH_CLIPS:
            pcm = decode_pcm(clip.read())
            self.speech[clip.name, "mp3", 16_000] = encode_as(pcm, "mp3", "libmp3lame")
            for rate in (44_100, 22_050):
                self.speech[clip.name, "ogg", rate] = encode_as(pcm, "ogg", "flac", rate=rate)
                self.speech[clip.name, "mp3", rate] = encode_as(pcm, "mp3", "libmp3lame", rate)
        self.bombs = {name: silence_flac(*shape) for name, shape in BOMBS.items()}
        self.bomb_slots = threading.BoundedSemaphore(BOMBS_AT_ONCE)
        self.http: httpx.Client | None = None
        self.done = 0  # requests finished, for the RSS timeline
        self.phase = "start"  # for the /hc samples
        self.lock = threading.Lock()

    # --- one request of each kind ---------------------------------------------------------

    def run_one(self, index: int, kind: str, variant: str | None = None) -> Outcome:
        rng = random.Random(f"{self.seed}:{index}")
        started = time.perf_counter()
        send = getattr(self, f"_{kind}")
        outcome = send(index, rng) if variant is None else send(index, rng, variant)
        outcome.seconds = time.perf_counter() - started
        with self.lock:
            self.done += 1
        return outcome

    def _post(self, outcome: Outcome, route: str, **kwargs: object) -> httpx.Response | None:
        assert self.http is not None
        outcome.route = route.split("?")[0]
        try:
            response = self.http.post(route, **kwargs)
        except httpx.HTTPError as exc:
            outcome.status, outcome.verdict = "lost", "lost"
            outcome.problem = f"{type(exc).__name__}: {exc}"
            return None
        outcome.status = str(response.status_code)
        outcome.error_code = error_code(response)
        if response.status_code == 503 and outcome.error_code == "server_busy":
            outcome.verdict = "busy"
            return None
        if response.status_code >= 500:
            outcome.verdict, outcome.problem = "5xx", response.text[:300]
            return None
        return response

    def _wrong(self, outcome: Outcome, problem: str) -> None:
        outcome.verdict, outcome.problem = "wrong", problem

    def _send_clip(
        self,
        outcome: Outcome,
        data: bytes,
        name: str,
        rng: random.Random,
        params: dict | None = None,
        form: dict | None = None,
        headers: dict | None = None,
        timeout: float | None = None,
    ) -> httpx.Response | None:
        """`data` to /asr (raw) or the OpenAI route (multipart), chosen by `rng`."""
        timeout = timeout or self.timeout
        if rng.random() < 0.5:
            query = {"language": "en", **(params or {})}
            return self._post(
                outcome,
                "/asr",
                content=data,
                params=query,
                headers={"Content-Type": "application/octet-stream", **(headers or {})},
                timeout=timeout,
            )
        fields = {"model": "whisper-1", "response_format": "json", "language": "en"}
        return self._post(
            outcome,
            OPENAI,
            files={"file": (name, data)},
            data={**fields, **(form or {})},
            timeout=timeout,
        )

    def _text(self, outcome: Outcome, response: httpx.Response) -> str | None:
        """The text of a 200 (else the outcome is wrong)."""
        if response.status_code != 200:
            self._wrong(outcome, f"status {response.status_code}: {response.text[:200]}")
            return None
        try:
            text = response.json()["text"]
            assert isinstance(text, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            self._wrong(outcome, f"no text in {response.text[:200]!r}")
            return None
        return text

    def _judge_words(
        self, outcome: Outcome, reference: str, text: str, others: dict[str, str]
    ) -> None:
        """WER against `reference`; `wrong` if the text is closer to one of `others` (another
        clip's words, a part or a prefix of the audio), `poor` if only over --max-wer."""
        outcome.wer = wer(reference, text)
        if others:
            name, closest = min(others.items(), key=lambda item: wer(item[1], text))
            if wer(closest, text) < outcome.wer:
                self._wrong(outcome, f"{name}: {text!r} is closer to {closest!r}")
                return
        if outcome.wer > self.max_wer:
            outcome.verdict = "poor"
            outcome.problem = f"WER {outcome.wer:.2f} > {self.max_wer}, own words: {text!r}"

    def _valid(self, index: int, rng: random.Random) -> Outcome:
        pool = VARIANT_CLIPS if rng.random() < 0.2 else BASE_CLIPS
        clip = rng.choice(pool)
        outcome = Outcome(index, "valid", "variant" if pool is VARIANT_CLIPS else "clip", "")
        outcome.clip = clip.name
        response = self._send_clip(outcome, clip.read(), clip.name, rng)
        if response is None:
            return outcome
        text = self._text(outcome, response)
        if text is None:
            return outcome
        outcome.wer = wer(clip.transcript, text)
        if outcome.wer > self.max_wer:
            # Another clip's words (a mix-up between requests: wrong) or a poor transcript of
            # the right audio (an accuracy matter, for the benchmarks: counted apart)?
            others = {c.transcript for c in ENGLISH} - {clip.transcript}
            closest = min(others, key=lambda other: wer(other, text))
            if wer(closest, text) < outcome.wer:
                self._wrong(outcome, f"MIX-UP: {text!r} is closer to {closest!r}")
            else:
                outcome.verdict = "poor"
                outcome.problem = f"WER {outcome.wer:.2f} > {self.max_wer}, own words: {text!r}"
        return outcome

    def _damaged(self, index: int, rng: random.Random, variant: str | None = None) -> Outcome:
        """Damaged or chained but decodable: 200 with all the words the audio still has."""
        variant = variant or rng.choice(DAMAGED)
        outcome = Outcome(index, "damaged", variant, "")
        first, second = rng.sample(SPEECH_CLIPS, 2)
        others = {
            f"another clip ({c.name})": c.transcript
            for c in ENGLISH
            if c.transcript != first.transcript
        }
        if variant == "garbage":  # 400 random bytes 10% in: skipped, not the end of the file
            outcome.clip, reference = first.name, first.transcript
            body = with_garbage(self.speech[first.name, "mp3", 16_000], 0.1, rng.randbytes(400))
            others |= prefixes(reference)
        elif variant.startswith("chained"):  # two streams, the sample rate changes between
            fmt = variant.split("-")[1]
            outcome.clip = f"{first.name} + {second.name}"
            reference = f"{first.transcript} {second.transcript}"
            body = self.speech[first.name, fmt, 44_100] + self.speech[second.name, fmt, 22_050]
            others = {
                f"only the first part ({first.name})": first.transcript,
                f"only the second part ({second.name})": second.transcript,
            }
        else:  # 40 KB (~2.5 s) zeroed in the middle: audio lost, and said so
            outcome.clip, reference = "long speech (77 s)", self.long_reference
            body = overwritten(self.long_mp3, 0.5, 40_000)
            others = prefixes(reference)
        name = "damaged.ogg" if variant == "chained-ogg" else "damaged.mp3"
        response = self._send_clip(outcome, body, name, rng)
        if response is None:
            return outcome
        text = self._text(outcome, response)
        if text is None:
            return outcome
        warnings = response.headers.get("X-Audio-Warnings")
        outcome.detail = f"X-Audio-Warnings: {warnings}" if warnings else None
        if variant == "zeroed" and not warnings:
            self._wrong(outcome, "no X-Audio-Warnings header for 40 KB of lost audio")
            return outcome
        self._judge_words(outcome, reference, text, others)
        return outcome

    def _corrupt(self, index: int, rng: random.Random) -> Outcome:
        variant = rng.choice(["random", "header_cut", "truncated", "flipped"])
        outcome = Outcome(index, "corrupt", variant, "")
        clip = rng.choice(ENGLISH)
        outcome.clip = clip.name if variant != "random" else None
        data = clip.read()
        if variant == "random":
            body = rng.randbytes(rng.randint(1, 300_000))
        elif variant == "header_cut":  # inside the container header: no audio at all
            body = data[: rng.randint(1, 44)]
        elif variant == "truncated":  # still the start of a valid file: may decode
            body = data[: rng.randint(len(data) // 20, len(data) * 19 // 20)]
        else:
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 64)):
                at = rng.randrange(len(data) // 4, len(data) * 3 // 4)
                flipped[at] ^= rng.randint(1, 255)
            body = bytes(flipped)
        response = self._send_clip(outcome, body, "audio.bin", rng)
        if response is None:
            return outcome
        if response.status_code == 200 and variant in ("random", "header_cut"):
            self._wrong(outcome, f"200 for undecodable input: {response.text[:200]}")
        elif response.status_code == 200:
            try:
                assert isinstance(response.json()["text"], str)
            except (ValueError, KeyError, TypeError, AssertionError):
                self._wrong(outcome, f"malformed 200: {response.text[:200]!r}")
        elif not 400 <= response.status_code < 500:
            self._wrong(outcome, f"status {response.status_code}")
        return outcome

    def _oversize(self, index: int, rng: random.Random) -> Outcome:
        variant = rng.choice(["raw", "chunked", "multipart"])
        size = rng.choice(OVERSIZE_BYTES)
        outcome = Outcome(index, "oversize", f"{variant} {size}", "")
        zeros = b"\0" * size
        if variant == "raw":
            response = self._post(outcome, "/asr", content=zeros)
        elif variant == "chunked":
            chunks = (zeros[at : at + 65536] for at in range(0, size, 65536))
            response = self._post(outcome, "/asr", content=chunks)
        else:
            response = self._post(outcome, OPENAI, files={"file": ("big.wav", zeros)})
        if response is not None and response.status_code != 413:
            self._wrong(
                outcome,
                f"{size} bytes ({size / MIB:.2f} MiB) {variant}: status "
                f"{response.status_code} {response.text[:160]}",
            )
        return outcome

    def _disconnect(self, index: int, rng: random.Random) -> Outcome:
        route = rng.choice(["/asr", OPENAI])
        outcome = Outcome(index, "disconnect", "close", route)
        if route == "/asr":
            request = httpx.Request(
                "POST",
                self.url + route,
                content=self.long_flac,
                headers={"Content-Type": "audio/flac"},
            )
        else:
            request = httpx.Request(
                "POST", self.url + route, files={"file": ("long.flac", self.long_flac)}
            )
        head = f"POST {route} HTTP/1.1\r\nHost: {self.host}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in request.headers.items() if name != "host"
        )
        try:
            with socket.create_connection((self.host, self.port), timeout=30) as sock:
                sock.sendall(head.encode() + b"\r\n" + request.read())
                time.sleep(rng.uniform(0.2, 1.0))
        except OSError as exc:
            outcome.status, outcome.verdict = "lost", "lost"
            outcome.problem = f"{type(exc).__name__}: {exc}"
            return outcome
        outcome.status = "closed"
        return outcome

    def _bad(self, index: int, rng: random.Random) -> Outcome:
        clip = rng.choice(SHORT_CLIPS)
        audio = {"file": (clip.name, clip.read())}
        form = {"model": "whisper-1", "response_format": "json"}
        variant = rng.choice(
            [
                "language=xx",
                "task=nope",
                "content-type",
                "json-no-url",
                "response_format=nope",
                "temperature=5",
                "word+json",
                "model=gpt-9",
                "no-file",
            ]
        )
        outcome = Outcome(index, "bad", variant, "")
        if variant == "language=xx":
            response = self._post(outcome, "/asr?language=xx", content=clip.read())
        elif variant == "task=nope":
            response = self._post(outcome, "/asr?task=nope", content=clip.read())
        elif variant == "content-type":
            # Any Content-Type is audio to /asr (as the seed took it): text is refused as audio.
            text = b"this is a sentence, not a recording"
            response = self._post(
                outcome, "/asr", content=text, headers={"Content-Type": "text/plain"}
            )
        elif variant == "json-no-url":
            response = self._post(outcome, "/asr", json={"file": clip.name})
        elif variant == "response_format=nope":
            response = self._post(
                outcome, OPENAI, files=audio, data={**form, "response_format": "nope"}
            )
        elif variant == "temperature=5":
            response = self._post(outcome, OPENAI, files=audio, data={**form, "temperature": "5"})
        elif variant == "word+json":
            response = self._post(
                outcome, OPENAI, files=audio, data={**form, "timestamp_granularities[]": "word"}
            )
        elif variant == "model=gpt-9":
            response = self._post(outcome, OPENAI, files=audio, data={**form, "model": "gpt-9"})
        else:
            response = self._post(outcome, OPENAI, data=form, files={"other": ("x.txt", b"x")})
        if response is not None and not 400 <= response.status_code < 500:
            self._wrong(outcome, f"status {response.status_code}: {response.text[:160]}")
        return outcome

    def _format(self, index: int, rng: random.Random) -> Outcome:
        """Playlists, session descriptions, subtitles, images: refused by name, never opened."""
        variant = rng.choice(NON_AUDIO)
        route = rng.choice(["/asr", OPENAI, TASKS])
        outcome = Outcome(index, "format", variant, "")
        data, name, codes = non_audio(variant, rng)
        if route == "/asr":
            headers = {"Content-Type": "application/octet-stream"}
            response = self._post(outcome, "/asr", content=data, headers=headers)
        elif route == OPENAI:
            form = {"model": "whisper-1", "response_format": "json"}
            response = self._post(outcome, OPENAI, files={"file": (name, data)}, data=form)
        else:
            response = self._post(outcome, TASKS, files={"file": (name, data)})
        if response is None:
            return outcome
        if response.status_code != 400 or outcome.error_code not in codes:
            self._wrong(
                outcome,
                f"expected 400 {' or '.join(codes)}: {response.status_code} {response.text[:200]}",
            )
        return outcome

    def _json(self, index: int, rng: random.Random) -> Outcome:
        """JSON bombs to /asr: too big (413), too deep (400), a huge url string (4xx)."""
        variant = rng.choice(["1MB", "1MB chunked", "[ x50000", "{ x10000", "60KB url",
                              "60KB path"])  # fmt: skip
        outcome = Outcome(index, "json", variant, "")
        json_type = {"Content-Type": "application/json"}
        if variant.startswith("1MB"):
            body = b'{"url": "http://127.0.0.1/' + b"a" * MIB + b'"}'
            if variant.endswith("chunked"):
                content: bytes | Iterator[bytes] = (
                    body[at : at + 65536] for at in range(0, len(body), 65536)
                )
            else:
                content = body
            expected = (413,)
        elif variant.startswith("["):
            content, expected = b"[" * 50_000, (400,)
        elif variant.startswith("{"):
            # 60 KB, under the JSON cap: the depth is what is refused
            content, expected = b'{"a":' * 10_000 + b"1" + b"}" * 10_000, (400,)
        else:
            start = "http://127.0.0.1/" if variant.endswith("url") else "/"
            content = json.dumps({"url": start + "a" * 60_000}).encode()
            expected = tuple(range(400, 500))
        response = self._post(outcome, "/asr", content=content, headers=json_type)
        if response is not None and response.status_code not in expected:
            wanted = "4xx" if len(expected) > 1 else expected[0]
            self._wrong(outcome, f"expected {wanted}: {response.status_code} {response.text[:200]}")
        return outcome

    def _slow(self, index: int, rng: random.Random) -> Outcome:
        """A body declared as 1 MB, sent a byte every 2 s: the server must answer 408 (or
        close the connection) within SLOW_ANSWER_S, not hold the request's slot."""
        route = rng.choice(["/asr", OPENAI, TASKS])
        outcome = Outcome(index, "slow", route, route)
        audio = rng.choice(SHORT_CLIPS).read()
        if route == "/asr":
            content_type, body = "application/octet-stream", audio
        else:
            boundary = "soakboundary"
            content_type = f"multipart/form-data; boundary={boundary}"
            body = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="slow.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            ).encode() + audio
        head = (
            f"POST {route} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n"
        ).encode()
        data, sent, closed = b"", 0, False
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                sock.sendall(head)
                started = time.monotonic()
                next_byte = started
                while time.monotonic() - started < SLOW_ANSWER_S and not closed:
                    now = time.monotonic()
                    if now >= next_byte:
                        try:
                            sock.sendall(body[sent : sent + 1])
                            sent += 1
                        except OSError:
                            pass  # closed by the server: the next recv says so
                        next_byte = now + SLOW_BYTE_EVERY_S
                    limit = min(next_byte, started + SLOW_ANSWER_S) - time.monotonic()
                    sock.settimeout(max(0.01, limit))
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        chunk = b""
                    data += chunk
                    closed = not chunk
                    if http_status(data) is not None and b"\r\n\r\n" in data:
                        break  # answered (the connection should close now too)
                waited = time.monotonic() - started
        except OSError as exc:
            outcome.status, outcome.verdict = "lost", "lost"
            outcome.problem = f"{type(exc).__name__}: {exc}"
            return outcome
        status = http_status(data)
        outcome.status = "closed" if status is None and closed else str(status or "open")
        outcome.error_code = raw_error_code(data)
        outcome.detail = f"{sent} bytes sent, answered or closed after {waited:.1f} s"
        if not closed and status is None:
            self._wrong(outcome, f"HELD: no answer and still open after {SLOW_ANSWER_S:g} s")
        elif status is not None and status >= 500:
            outcome.verdict, outcome.problem = "5xx", data[:300].decode(errors="replace")
        elif status not in (None, 408):
            self._wrong(outcome, f"expected 408: {data[:200]!r}")
        return outcome

    def _idle(self, index: int, rng: random.Random) -> Outcome:
        """A few connections that never finish a request: closed by the server after
        HEADER_TIMEOUT_S (408 for a partial request)."""
        variant = rng.choice(list(IDLE_VARIANTS))
        count = rng.randint(4, 12)
        outcome = Outcome(index, "idle", variant, "")
        limit = HEADER_TIMEOUT_S + IDLE_SLACK_S
        held = hold_connections(self.host, self.port, [variant] * count, limit)
        problems, statuses = judge_held(held, limit)
        closed = [conn.closed_after_s for conn in held if conn.closed_after_s is not None]
        outcome.status = "/".join(sorted(statuses))
        outcome.detail = (
            f"{count} connections: {dict(statuses)}, closed after "
            f"{min(closed, default=0):.1f}-{max(closed, default=0):.1f} s"
        )
        if any(conn.status is not None and conn.status >= 500 for conn in held):
            outcome.verdict, outcome.problem = "5xx", "; ".join(problems)
        elif any(conn.sock is None for conn in held):
            outcome.verdict, outcome.problem = "lost", "; ".join(problems)
        elif problems:
            self._wrong(outcome, "; ".join(problems[:3]))
        return outcome

    def _bomb(self, index: int, rng: random.Random, name: str | None = None) -> Outcome:
        """Hours of silence in a small FLAC: 200 with no words, 413, or 503 `server_busy`
        when the decoded-audio budget is full; never more than BOMBS_AT_ONCE in flight."""
        name = name or rng.choice(list(BOMBS))
        outcome = Outcome(index, "bomb", name, "")
        with self.bomb_slots:
            response = self._send_clip(
                outcome, self.bombs[name], "silence.flac", rng, timeout=BOMB_TIMEOUT_S
            )
        if response is None or response.status_code == 413:
            return outcome
        text = self._text(outcome, response)
        if text is not None and text.strip():
            self._wrong(outcome, f"words in silence: {text[:200]!r}")
        return outcome

    # --- phases and measurements -----------------------------------------------------------

    @contextlib.contextmanager
    def client(self, concurrency: int) -> Iterator[None]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=self.url, timeout=self.timeout, limits=limits) as http:
            self.http = http
            try:
                yield
            finally:
                self.http = None

    def run_phase(self, kinds: list[tuple], concurrency: int) -> list[Outcome]:
        with self.client(concurrency), ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda item: self.run_one(*item), kinds))

    def bomb_phase(self, first_index: int, pid: int | None) -> tuple[list[Outcome], dict]:
        """BOMBS_AT_ONCE bombs of 3 h of silence at once, on an idle server: what they got,
        and the server's peak RSS meanwhile (VmHWM, restarted before; else sampled)."""
        info: dict = {"idle_before_s": self.wait_idle(), "bombs": BOMBS_AT_ONCE,
                      "bomb": BOMB_PHASE, "bomb_bytes": len(self.bombs[BOMB_PHASE])}  # fmt: skip
        info["peak_rss_before_mb"] = proc_status_mb(pid, "VmHWM") if pid else None
        info["rss_before_mb"] = proc_status_mb(pid, "VmRSS") if pid else None
        info["peak_from"] = "VmHWM" if pid and reset_peak_rss(pid) else "samples every 0.1 s"
        sampled: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while pid is not None and not stop.wait(0.1):
                sampled.append(proc_status_mb(pid, "VmRSS") or 0.0)

        barrier = threading.Barrier(BOMBS_AT_ONCE)

        def one(index: int) -> Outcome:
            rng = random.Random(f"{self.seed}:{index}")
            barrier.wait()
            started = time.perf_counter()
            outcome = self._bomb(index, rng, BOMB_PHASE)
            outcome.seconds = time.perf_counter() - started
            outcome.variant = f"phase: {outcome.variant}"
            return outcome

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        indices = range(first_index, first_index + BOMBS_AT_ONCE)
        with self.client(BOMBS_AT_ONCE), ThreadPoolExecutor(BOMBS_AT_ONCE) as pool:
            outcomes = list(pool.map(one, indices))
        info["wall_s"] = time.perf_counter() - began
        info["idle_after_s"] = self.wait_idle()
        stop.set()
        sampler.join()
        if pid is not None:
            info["rss_after_mb"] = proc_status_mb(pid, "VmRSS")
            sampled_peak = max(sampled, default=None)
            info["peak_rss_sampled_mb"] = sampled_peak
            hwm = proc_status_mb(pid, "VmHWM")
            info["peak_rss_mb"] = hwm if info["peak_from"] == "VmHWM" else sampled_peak
        info["statuses"] = dict(Counter(f"{o.status} {o.error_code or ''}".strip()
                                        for o in outcomes))  # fmt: skip
        info["seconds"] = [round(o.seconds, 1) for o in outcomes]
        return outcomes, info

    def idle_phase(self, pid: int | None, count: int) -> dict:
        """`count` connections that never finish a request, held at once: each closed by the
        server within HEADER_TIMEOUT_S + IDLE_SLACK_S, its open fds back to where they were."""
        limit = HEADER_TIMEOUT_S + IDLE_SLACK_S
        names = list(IDLE_VARIANTS)
        variants = [names[i % len(names)] for i in range(count)]
        fds_before = open_fds(pid) if pid else None
        held: list[Held] = []
        began = time.monotonic()
        holder = threading.Thread(
            target=lambda: held.extend(hold_connections(self.host, self.port, variants, limit))
        )
        holder.start()
        time.sleep(min(2.0, HEADER_TIMEOUT_S / 2))  # all open, none timed out yet
        fds_during = open_fds(pid) if pid else None
        holder.join()
        wall = time.monotonic() - began
        time.sleep(1.0)
        fds_after = open_fds(pid) if pid else None
        problems, statuses = judge_held(held, limit)
        closed = sorted(conn.closed_after_s for conn in held if conn.closed_after_s is not None)
        by_variant = {
            name: dict(Counter(conn.label for conn in held if conn.variant == name))
            for name in names
        }
        return {
            "connections": count,
            "opened": sum(conn.sock is not None for conn in held),
            "closed_by_server_in_time": len(closed),
            "still_open_or_failed": count - len(closed),
            "statuses": dict(statuses),
            "statuses_by_variant": by_variant,
            "closed_after_s": {
                "min": closed[0] if closed else None,
                "p50": percentile(closed, 50),
                "max": closed[-1] if closed else None,
            },
            "wall_s": wall,
            "problems": problems[:20],
            "fds": {"before": fds_before, "during": fds_during, "after": fds_after},
        }

    def wait_idle(self, within_s: float = 30) -> float | None:
        """Seconds until no transcription is in progress (None: still busy after `within_s`)."""
        started = time.monotonic()
        while time.monotonic() - started < within_s:
            try:
                text = httpx.get(f"{self.url}/metrics", timeout=5).text
                if metric(text, IN_PROGRESS) == 0:
                    return time.monotonic() - started
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        return None


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def proc_status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def list_tree(root: Path | None) -> list[str] | None:
    if root is None:
        return None
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def snapshot(soak: Soak, pid: int | None, tmpdir: Path | None, idle_wait: bool) -> Snapshot:
    shot = Snapshot()
    if idle_wait:
        shot.idle_after_s = soak.wait_idle()
        time.sleep(2.0)
    if pid is not None:
        shot.rss_mb = proc_status_mb(pid, "VmRSS")
        shot.peak_rss_mb = proc_status_mb(pid, "VmHWM")
        shot.fds = open_fds(pid)
    shot.tmp_files = list_tree(tmpdir)
    return shot


class RssWatcher:
    """The server's RSS every 0.5 s while requests run: (seconds, requests done, MB)."""

    def __init__(self, soak: Soak, pid: int | None):
        self.soak, self.pid = soak, pid
        self.samples: list[tuple[float, int, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        started = time.monotonic()
        while self.pid is not None and not self.stop.wait(0.5):
            rss = proc_status_mb(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((round(time.monotonic() - started, 1), self.soak.done, rss))

    def __enter__(self) -> RssWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def floors(self, total: int) -> list[float]:
        """The lowest RSS in each quarter of the requests: flat once settled, rising with a
        leak (single samples swing by 50 MB or more with the requests in flight)."""
        quarters = [
            [rss for _, done, rss in self.samples if q * total <= 4 * done < (q + 1) * total]
            for q in range(4)
        ]
        return [min(rss) for rss in quarters if rss]


class HealthWatcher:
    """`GET /hc` every HEALTH_EVERY_S for the whole run, each on a new connection (as a load
    balancer's check would): (seconds, phase, latency s, status or error)."""

    def __init__(self, soak: Soak):
        self.soak = soak
        self.samples: list[tuple[float, str, float, int | str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def probe(self) -> int | str:
        request = f"GET /hc HTTP/1.1\r\nHost: {self.soak.host}\r\nConnection: close\r\n\r\n"
        data = b""
        try:
            with socket.create_connection(
                (self.soak.host, self.soak.port), timeout=HEALTH_TIMEOUT_S
            ) as sock:
                sock.sendall(request.encode())
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError as exc:
            return type(exc).__name__
        return http_status(data) or f"no HTTP answer: {data[:60]!r}"

    def _watch(self) -> None:
        started = time.monotonic()
        next_at = started
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + HEALTH_EVERY_S, time.monotonic())
            phase, began = self.soak.phase, time.monotonic()
            status = self.probe()
            latency = time.monotonic() - began
            self.samples.append((round(began - started, 2), phase, round(latency, 4), status))

    def __enter__(self) -> HealthWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def stats(self) -> dict:
        """Latency (ms) and failures, over the whole run and per phase."""

        def summary(samples: list) -> dict:
            latencies = [latency * 1000 for _, _, latency, _ in samples]
            failed = [(t, phase, status) for t, phase, _, status in samples if status != 200]
            return {
                "probes": len(samples),
                "failed": len(failed),
                "first_failures": failed[:5],
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
                "max_ms": max(latencies, default=None),
            }

        phases = list(dict.fromkeys(phase for _, phase, _, _ in self.samples))
        return {
            "all": summary(self.samples),
            "by_phase": {p: summary([s for s in self.samples if s[1] == p]) for p in phases},
        }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def log_findings(log_path: Path | None) -> dict:
    if log_path is None or not log_path.exists():
        return {}
    log = log_path.read_text(errors="replace")
    tracebacks = [m.start() for m in re.finditer(r"Traceback \(most recent call last\)", log)]
    return {
        "client_gone_499": len(re.findall(r"asrd\.access: POST \S+ 499 ", log)),
        "access_408": len(re.findall(r"asrd\.access: \S+ \S+ 408 ", log)),
        "access_5xx": re.findall(r"asrd\.access: \S+ \S+ 5\d\d .*", log)[:20],
        "tracebacks": len(tracebacks),
        "first_traceback": log[tracebacks[0] : tracebacks[0] + 3000] if tracebacks else None,
        "error_lines": [line for line in log.splitlines() if " ERROR " in line][:20],
    }


def main() -> int:
    if "--cluster" in sys.argv[1:]:  # 2 API replicas + 2 workers on Redis: bench/soak_cluster.py
        import soak_cluster

        return soak_cluster.main([arg for arg in sys.argv[1:] if arg != "--cluster"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, help="warm-up requests (default: 10%%)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--max-wer", type=float, default=0.35)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument(
        "--bomb-phase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"first, {BOMBS_AT_ONCE} bombs of 3 h at once (default: on)",
    )
    parser.add_argument(
        "--idle-sockets",
        type=int,
        default=IDLE_SOCKETS,
        help="idle connections held at once, before the warm-up (0: no such phase)",
    )
    parser.add_argument("--url", help="soak this running server instead of starting asrd")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, to measure it")
    parser.add_argument("--out", type=Path, help="the results JSON (default: bench/results/)")
    args = parser.parse_args()

    kinds, warmup = plan(args.requests, args.seed, args.warmup)
    items = list(enumerate(kinds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmpdir, log_path, pid, alive = None, None, args.pid, None
    bomb_info, idle_info = None, None
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="asrd-soak-tmp-"))
            stack.callback(shutil.rmtree, tmpdir, ignore_errors=True)
            log_path = RESULTS / "soak.log"
            env = {**SERVER_ENV, "MODEL_ID": args.model, "TMPDIR": str(tmpdir)}
            server = AsrdServer(env, log_path)
            stack.callback(server.stop)
        soak = Soak(url or server.url, args.model, args.seed, args.max_wer, args.timeout)
        if url is None:  # the inputs were built while the model loaded
            server.wait_ready()
            url, pid = server.url, server.process.pid
        print(
            f"soak: {args.requests} requests ({warmup} warm-up, + {len(PRIMER)} in it) at "
            f"concurrency {args.concurrency}, seed {args.seed}, {url}",
            flush=True,
        )
        start = snapshot(soak, pid, tmpdir, idle_wait=False)
        with RssWatcher(soak, pid) as watcher, HealthWatcher(soak) as health:
            began = time.perf_counter()
            primer = [(len(items) + i, kind, variant) for i, (kind, variant) in enumerate(PRIMER)]
            if args.bomb_phase:
                soak.phase = "bombs"
                bomb_outcomes, bomb_info = soak.bomb_phase(len(items) + len(primer), pid)
                outcomes = bomb_outcomes
                print(
                    f"bomb phase: {bomb_info['statuses']} in {bomb_info['wall_s']:.1f} s, peak "
                    f"RSS {bomb_info.get('peak_rss_mb') or 0:.0f} MB",
                    flush=True,
                )
            else:
                outcomes = []
            if args.idle_sockets:
                soak.phase = "idle connections"
                idle_info = soak.idle_phase(pid, args.idle_sockets)
                print(
                    f"idle connections: {idle_info['statuses']}, closed after "
                    f"{idle_info['closed_after_s']}, fds {idle_info['fds']}",
                    flush=True,
                )
            # The warm-up after the phases: they leave the server's memory trimmed, not settled.
            soak.phase = "warm-up"
            warm_items = items[:warmup] + primer
            random.Random(args.seed).shuffle(warm_items)
            outcomes += soak.run_phase(warm_items, args.concurrency)
            print(f"phases and warm-up done in {time.perf_counter() - began:.1f} s", flush=True)
            warm_wall = time.perf_counter() - began
            soak.phase = "settling"
            after_warmup = snapshot(soak, pid, tmpdir, idle_wait=True)
            began = time.perf_counter()
            soak.phase = "main"
            outcomes += soak.run_phase(items[warmup:], args.concurrency)
            main_wall = time.perf_counter() - began
            soak.phase = "end"
            end = snapshot(soak, pid, tmpdir, idle_wait=True)
        try:
            health_status: int | str = httpx.get(f"{url}/hc", timeout=10).status_code
        except httpx.HTTPError as exc:
            health_status = type(exc).__name__
        if args.url is None:
            alive = server.process.poll() is None

    out = summarise(
        args, outcomes, warmup + len(PRIMER), warm_wall, main_wall, start, after_warmup, end
    )
    out["phases"] = {"bombs": bomb_info, "idle_connections": idle_info}
    out["health"] = health.stats()
    peaks = [end.peak_rss_mb, (bomb_info or {}).get("peak_rss_before_mb")]
    out["peak_rss_mb"] = {
        "overall": max((p for p in peaks if p is not None), default=None),
        "bomb_phase": (bomb_info or {}).get("peak_rss_mb"),
    }
    out["server"] = {
        "health_status": health_status,
        "alive_at_end": alive,
        "pid": pid,
        "settings": SERVER_ENV if args.url is None else None,
        "log": str(log_path) if log_path else None,
        "log_findings": log_findings(log_path),
        "long_upload_seconds": soak.long_seconds,
    }
    out["rss_mb_floor_per_quarter"] = watcher.floors(args.requests + len(PRIMER))
    out["rss_timeline"] = watcher.samples
    out["health_timeline"] = health.samples
    out["criteria"] = criteria(out)
    out["pass"] = all(c["pass"] for c in out["criteria"].values() if c["pass"] is not None)
    out["machine"] = machine()
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    suffix = "" if args.url is None else "-peer"
    path = args.out or RESULTS / f"soak-{args.model}{suffix}.json"
    path.write_text(json.dumps(out, indent=2))
    print_summary(out, path)
    return 0 if out["pass"] else 1


def summarise(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    warmup: int,
    warm_wall: float,
    main_wall: float,
    start: Snapshot,
    after_warmup: Snapshot,
    end: Snapshot,
) -> dict:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    by_variant: dict[str, Counter] = defaultdict(Counter)
    verdicts_by_kind: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        by_kind[o.kind][o.status] += 1
        by_variant[f"{o.kind} {o.variant}"][o.status] += 1
        verdicts_by_kind[o.kind][o.verdict] += 1
    verdicts = Counter(o.verdict for o in outcomes)
    valid = [o for o in outcomes if o.kind == "valid" and o.status == "200"]
    latencies = [o.seconds for o in valid]
    wers = [o.wer for o in valid if o.wer is not None]
    damaged_wers = [o.wer for o in outcomes if o.kind == "damaged" and o.wer is not None]
    tmp_new = None
    if end.tmp_files is not None and after_warmup.tmp_files is not None:
        tmp_new = sorted(set(end.tmp_files) - set(after_warmup.tmp_files))
    growth = None
    if end.rss_mb and after_warmup.rss_mb:
        growth = (end.rss_mb - after_warmup.rss_mb) / after_warmup.rss_mb
    return {
        "benchmark": "soak",
        "model": args.model,
        "target": args.url or "asrd",
        "requests": len(outcomes),
        "warmup_requests": warmup,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "max_wer": args.max_wer,
        "wall_seconds": {"warmup": warm_wall, "main": main_wall, "total": warm_wall + main_wall},
        "requests_per_second": len(outcomes) / (warm_wall + main_wall),
        "valid_latency_s": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "answered": len(latencies),
        },
        "valid_mean_wer": statistics.mean(wers) if wers else None,
        "damaged_mean_wer": statistics.mean(damaged_wers) if damaged_wers else None,
        "status_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "verdicts_by_kind": {
            k: dict(sorted(v.items())) for k, v in sorted(verdicts_by_kind.items())
        },
        "status_by_variant": {k: dict(sorted(v.items())) for k, v in sorted(by_variant.items())},
        "counts": {name: verdicts.get(name, 0) for name in VERDICTS},
        "problems": [asdict(o) for o in outcomes if o.verdict != "ok"],
        "snapshots": {
            "start": asdict(start),
            "after_warmup": asdict(after_warmup),
            "end": asdict(end),
        },
        "rss_growth_after_warmup": growth,
        "tmp_files_new_after_warmup": tmp_new,
    }


def criteria(out: dict) -> dict:
    counts, snaps = out["counts"], out["snapshots"]
    warm, end = snaps["after_warmup"], snaps["end"]
    growth, tmp_new = out["rss_growth_after_warmup"], out["tmp_files_new_after_warmup"]
    fds_ok = None
    if warm["fds"] is not None and end["fds"] is not None:
        fds_ok = end["fds"] <= warm["fds"] + 2
    idle = [warm["idle_after_s"], end["idle_after_s"]]
    bombs, held = out["phases"]["bombs"], out["phases"]["idle_connections"]
    health = out["health"]["all"]
    peak = bombs and bombs.get("peak_rss_mb")
    held_fds = held and held["fds"]
    held_fds_ok = None
    if held_fds and held_fds["before"] is not None and held_fds["after"] is not None:
        held_fds_ok = held_fds["after"] <= held_fds["before"] + 2
    limit = f"HEADER_TIMEOUT_S + {IDLE_SLACK_S:g} s"
    return {
        "no 5xx": {"pass": counts["5xx"] == 0, "value": counts["5xx"]},
        "no wrong answer": {"pass": counts["wrong"] == 0, "value": counts["wrong"]},
        "nothing lost": {"pass": counts["lost"] == 0, "value": counts["lost"]},
        "idle again within 30 s": {"pass": None not in idle, "value": idle},
        "RSS growth after warm-up < 10%": {
            "pass": None if growth is None else growth < 0.10,
            "value": growth,
        },
        "fds at end <= after warm-up + 2": {"pass": fds_ok, "value": [warm["fds"], end["fds"]]},
        "no temp file after warm-up": {
            "pass": None if tmp_new is None else not tmp_new,
            "value": tmp_new,
        },
        f"bomb phase: peak RSS < {MAX_BOMB_PHASE_RSS_MB} MB": {
            "pass": None if not peak else peak < MAX_BOMB_PHASE_RSS_MB,
            "value": peak,
        },
        f"idle connections: all closed by the server within {limit}": {
            "pass": None if not held else not held["problems"],
            "value": held and [held["closed_by_server_in_time"], held["problems"][:3]],
        },
        "idle connections: server fds back to before (+2)": {
            "pass": held_fds_ok,
            "value": held_fds,
        },
        f"every /hc probe answered 200 within {HEALTH_TIMEOUT_S:g} s": {
            "pass": health["failed"] == 0 and health["probes"] > 0,
            "value": [health["probes"], health["failed"], health["first_failures"]],
        },
    }


def print_summary(out: dict, path: Path) -> None:
    def num(value: float | None, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value, fmt)

    snaps = out["snapshots"]
    start, warm, end = snaps["start"], snaps["after_warmup"], snaps["end"]
    lat = out["valid_latency_s"]
    print()
    print(
        f"soak {out['model']} ({out['target']}): {out['requests']} requests, "
        f"concurrency {out['concurrency']}, seed {out['seed']}"
    )
    print(
        f"  wall {out['wall_seconds']['total']:.1f} s, {out['requests_per_second']:.2f} "
        f"requests/s; valid: p50 {num(lat['p50'])} s, p95 {num(lat['p95'])} s over "
        f"{lat['answered']} answers, mean WER {num(out['valid_mean_wer'], '.3f')}; damaged: "
        f"mean WER {num(out['damaged_mean_wer'], '.3f')}"
    )
    for kind, statuses in out["status_by_kind"].items():
        text = " ".join(f"{status}:{count}" for status, count in statuses.items())
        verdicts = " ".join(f"{v}:{n}" for v, n in out["verdicts_by_kind"][kind].items())
        print(f"  {kind:<11} {sum(statuses.values()):>4}  {text:<40} | {verdicts}")
    counts = out["counts"]
    print("  " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    bombs, held = out["phases"]["bombs"], out["phases"]["idle_connections"]
    by_phase = out["health"]["by_phase"]

    def hc(phase: str | None) -> str:
        h = out["health"]["all"] if phase is None else by_phase.get(phase)
        if not h:
            return "n/a"
        return (
            f"p50 {num(h['p50_ms'], '.1f')} ms, p99 {num(h['p99_ms'], '.1f')} ms, max "
            f"{num(h['max_ms'], '.0f')} ms over {h['probes']} probes, {h['failed']} failed"
        )

    if bombs:
        print(
            f"  bomb phase: {bombs['bombs']} x {bombs['bomb']} ({bombs['bomb_bytes'] / MIB:.1f} "
            f"MB each) at once: {bombs['statuses']}, answered in {bombs['seconds']} s; server "
            f"peak RSS {num(bombs.get('peak_rss_mb'), '.0f')} MB ({bombs['peak_from']}); /hc "
            f"{hc('bombs')}"
        )
    if held:
        closed = held["closed_after_s"]
        print(
            f"  idle connections: {held['connections']} held at once: {held['statuses']}, "
            f"closed by the server after {num(closed['min'], '.1f')}-{num(closed['max'], '.1f')} "
            f"s (p50 {num(closed['p50'], '.1f')}); server fds before {held['fds']['before']}, "
            f"during {held['fds']['during']}, after {held['fds']['after']}; /hc "
            f"{hc('idle connections')}"
        )
    print(f"  /hc every {HEALTH_EVERY_S:g} s, whole run: {hc(None)}")
    for phase in ("warm-up", "main"):
        print(f"  /hc during {phase}: {hc(phase)}")
    print(
        f"  RSS MB: start {num(start['rss_mb'], '.0f')}, after warm-up "
        f"{num(warm['rss_mb'], '.0f')}, end {num(end['rss_mb'], '.0f')} (growth "
        f"{num(out['rss_growth_after_warmup'], '+.1%')}); peak (VmHWM) overall "
        f"{num(out['peak_rss_mb']['overall'], '.0f')}, in the bomb phase "
        f"{num(out['peak_rss_mb']['bomb_phase'], '.0f')}"
    )
    if out["rss_mb_floor_per_quarter"]:
        floors = ", ".join(f"{v:.0f}" for v in out["rss_mb_floor_per_quarter"])
        print(f"  RSS MB while running, lowest per quarter of the requests: {floors}")
    print(
        f"  fds: start {start['fds']}, after warm-up {warm['fds']}, end {end['fds']}; TMPDIR "
        f"files: start {start['tmp_files']}, new after warm-up {out['tmp_files_new_after_warmup']}"
    )
    findings = out["server"]["log_findings"]
    if findings:
        print(
            f"  server log: {findings['client_gone_499']} 499s for "
            f"{out['status_by_kind'].get('disconnect', {}).get('closed', 0)} disconnects, "
            f"{findings['access_408']} 408s, {findings['tracebacks']} tracebacks, "
            f"{len(findings['error_lines'])} ERROR lines; /hc at end "
            f"{out['server']['health_status']}"
        )
    shown = [p for p in out["problems"] if p["verdict"] != "busy"]  # busy: counted above
    for problem in shown[:12]:
        print(
            f"  ! #{problem['index']} {problem['kind']} {problem['variant']} "
            f"{problem['route']} -> {problem['status']}: {problem['problem']}"
        )
    if len(shown) > 12:
        print(f"  ! ... {len(shown) - 12} more in the JSON")
    for name, check in out["criteria"].items():
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        print(f"  {verdict}  {name}: {check['value']}")
    print(f"{'PASS' if out['pass'] else 'FAIL'}  (results: {path})")


if __name__ == "__main__":
    sys.exit(main())
