"""Soak run: many requests of every kind, good and bad, against one live `asrd serve`.

    python bench/soak.py --requests 1000 --concurrency 8
    python bench/soak.py --requests 120 --seed 1                 # a short check
    python bench/soak.py --url http://host:8000 --pid 1234       # a running server (local pid)

Sends N requests from C threads, a seeded mix of kinds (in proportions, then shuffled):
  50% valid: real English clips (some in the variant formats) to `POST /asr` (raw body) or
      `POST /v1/audio/transcriptions` (multipart, json); 200 and WER <= --max-wer is ok, a
      higher WER is `poor` when the text is still closest to its own clip's transcript
      (accuracy, reported) and `wrong` when it is closer to another clip's (a mix-up);
  15% corrupt: random bytes and a file cut inside its header (4xx, else wrong); a random
      prefix of a file, or a file with bytes flipped in its middle (200 or 4xx: both can
      still decode; a 200 must be a well-formed answer);
  10% oversize: bodies over MAX_UPLOAD_MB (8 MB, zeros) raw, chunked or multipart (413);
  10% disconnect: ~77 s of speech (flac) over a raw socket, closed 0.2-1 s after sending
      without reading the answer (the server should stop that work);
  15% bad parameters: unknown language, response_format, temperature out of range, word
      timestamps with json, unknown model, wrong Content-Type, ... (4xx, else wrong).
Every kind is in the warm-up (the first 10% of requests). Any 5xx is an error (503
`server_busy` is counted apart), an exception or timeout is lost.

The server (started here with MAX_UPLOAD_MB=8, MAX_AUDIO_S=400, LOG_LEVEL=INFO and TMPDIR set
to a fresh directory; log in bench/results/soak.log) is measured at start, after the warm-up
and at the end, each time after the clients have closed their connections, the server is idle
and 2 s have passed: RSS, open file descriptors, files in its TMPDIR. Pass: no 5xx, no wrong
answer, nothing lost, the server idle again within 30 s of the last request, RSS growth after
the warm-up under 10% (the allocator takes ~100 requests to settle: give short runs a longer
--warmup), at most 2 more open fds than after the warm-up (slack for a lazily opened log or
library file), no temp file created after the warm-up. Exit status 1 on FAIL.
Writes bench/results/soak-<model>.json (`-peer` with --url). A server given by --url must
run with MAX_UPLOAD_MB=8 too; without --pid its RSS, fds and TMPDIR are not checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from common import CLIPS, RESULTS, AsrdServer, encode, long_english_audio, machine, wer

VERDICTS = ("ok", "poor", "wrong", "5xx", "busy", "lost")
KINDS = {"valid": 0.50, "corrupt": 0.15, "oversize": 0.10, "disconnect": 0.10, "bad": 0.15}
VARIANT_TAGS = ("_transcoded", "_8k", "_44k", "law", "_16k")
ENGLISH = [c for c in CLIPS.values() if c.language == "en"]
BASE_CLIPS = [c for c in ENGLISH if not any(t in c.name for t in VARIANT_TAGS)]
VARIANT_CLIPS = [c for c in ENGLISH if any(t in c.name for t in VARIANT_TAGS)]
SHORT_CLIPS = [c for c in BASE_CLIPS if c.duration < 8]
UPLOAD_MB = 8
MIB = 1024 * 1024
# Over 8 MB: just over it, 9 MB (decimal), over 9 MiB, and well over.
OVERSIZE_BYTES = (UPLOAD_MB * MIB + 4096, 9_000_000, 9 * MIB + 4096, 12 * MIB)
SERVER_ENV = {"MAX_UPLOAD_MB": str(UPLOAD_MB), "MAX_AUDIO_S": "400", "LOG_LEVEL": "INFO"}
IN_PROGRESS = "asrd_transcriptions_in_progress"
OPENAI = "/v1/audio/transcriptions"


@dataclass
class Outcome:
    index: int
    kind: str
    variant: str
    route: str
    status: str = ""  # the HTTP status, "closed" (disconnect), or "lost"
    seconds: float = 0.0
    clip: str | None = None
    wer: float | None = None
    error_code: str | None = None
    problem: str | None = None  # why it is not ok
    verdict: str = "ok"  # one of VERDICTS


@dataclass
class Snapshot:
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    fds: int | None = None
    tmp_files: list[str] | None = None
    idle_after_s: float | None = None


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


class Soak:
    def __init__(self, url: str, model: str, seed: int, max_wer: float, timeout: float):
        self.url, self.model, self.seed = url.rstrip("/"), model, seed
        self.max_wer, self.timeout = max_wer, timeout
        parsed = httpx.URL(self.url)
        self.host, self.port = parsed.host, parsed.port or 80
        samples, _ = long_english_audio(repeats=1)
        self.long_flac = encode(samples, "flac")
        self.long_seconds = len(samples) / 16000
        self.http: httpx.Client | None = None
        self.done = 0  # requests finished, for the RSS timeline
        self.lock = threading.Lock()

    # --- one request of each kind ---------------------------------------------------------

    def run_one(self, index: int, kind: str) -> Outcome:
        rng = random.Random(f"{self.seed}:{index}")
        started = time.perf_counter()
        outcome = getattr(self, f"_{kind}")(index, rng)
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
    ) -> httpx.Response | None:
        """`data` to /asr (raw) or the OpenAI route (multipart), chosen by `rng`."""
        if rng.random() < 0.5:
            query = {"language": "en", **(params or {})}
            return self._post(
                outcome,
                "/asr",
                content=data,
                params=query,
                headers={"Content-Type": "application/octet-stream", **(headers or {})},
            )
        fields = {"model": "whisper-1", "response_format": "json", "language": "en"}
        return self._post(
            outcome, OPENAI, files={"file": (name, data)}, data={**fields, **(form or {})}
        )

    def _valid(self, index: int, rng: random.Random) -> Outcome:
        pool = VARIANT_CLIPS if rng.random() < 0.2 else BASE_CLIPS
        clip = rng.choice(pool)
        outcome = Outcome(index, "valid", "variant" if pool is VARIANT_CLIPS else "clip", "")
        outcome.clip = clip.name
        response = self._send_clip(outcome, clip.read(), clip.name, rng)
        if response is None:
            return outcome
        if response.status_code != 200:
            self._wrong(outcome, f"status {response.status_code}: {response.text[:200]}")
            return outcome
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError):
            self._wrong(outcome, f"no text in {response.text[:200]!r}")
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
            response = self._post(
                outcome, "/asr", content=clip.read(), headers={"Content-Type": "text/plain"}
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

    # --- phases and measurements -----------------------------------------------------------

    def run_phase(self, kinds: list[tuple[int, str]], concurrency: int) -> list[Outcome]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=self.url, timeout=self.timeout, limits=limits) as http:
            self.http = http
            with ThreadPoolExecutor(concurrency) as pool:
                outcomes = list(pool.map(lambda item: self.run_one(*item), kinds))
        self.http = None
        return outcomes

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
        "access_5xx": re.findall(r"asrd\.access: \S+ \S+ 5\d\d .*", log)[:20],
        "tracebacks": len(tracebacks),
        "first_traceback": log[tracebacks[0] : tracebacks[0] + 3000] if tracebacks else None,
        "error_lines": [line for line in log.splitlines() if " ERROR " in line][:20],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, help="warm-up requests (default: 10%%)")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--max-wer", type=float, default=0.35)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--url", help="soak this running server instead of starting asrd")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, to measure it")
    args = parser.parse_args()

    kinds, warmup = plan(args.requests, args.seed, args.warmup)
    items = list(enumerate(kinds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmpdir, log_path, pid, alive = None, None, args.pid, None
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="asrd-soak-tmp-"))
            stack.callback(shutil.rmtree, tmpdir, ignore_errors=True)
            log_path = RESULTS / "soak.log"
            env = {**SERVER_ENV, "MODEL_ID": args.model, "TMPDIR": str(tmpdir)}
            server = stack.enter_context(AsrdServer(env, log_path))
            url, pid = server.url, server.process.pid
        soak = Soak(url, args.model, args.seed, args.max_wer, args.timeout)
        print(
            f"soak: {args.requests} requests ({warmup} warm-up) at concurrency "
            f"{args.concurrency}, seed {args.seed}, {url}",
            flush=True,
        )
        start = snapshot(soak, pid, tmpdir, idle_wait=False)
        with RssWatcher(soak, pid) as watcher:
            began = time.perf_counter()
            outcomes = soak.run_phase(items[:warmup], args.concurrency)
            warm_wall = time.perf_counter() - began
            after_warmup = snapshot(soak, pid, tmpdir, idle_wait=True)
            print(f"warm-up done in {warm_wall:.1f} s", flush=True)
            began = time.perf_counter()
            outcomes += soak.run_phase(items[warmup:], args.concurrency)
            main_wall = time.perf_counter() - began
        end = snapshot(soak, pid, tmpdir, idle_wait=True)
        try:
            health: int | str = httpx.get(f"{url}/hc", timeout=10).status_code
        except httpx.HTTPError as exc:
            health = type(exc).__name__
        if args.url is None:
            alive = server.process.poll() is None

    out = summarise(args, outcomes, warmup, warm_wall, main_wall, start, after_warmup, end)
    out["server"] = {
        "health_status": health,
        "alive_at_end": alive,
        "pid": pid,
        "log": str(log_path) if log_path else None,
        "log_findings": log_findings(log_path),
        "long_upload_seconds": soak.long_seconds,
    }
    out["rss_mb_floor_per_quarter"] = watcher.floors(len(outcomes))
    out["rss_timeline"] = watcher.samples
    out["criteria"] = criteria(out)
    out["pass"] = all(c["pass"] for c in out["criteria"].values() if c["pass"] is not None)
    out["machine"] = machine()
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    suffix = "" if args.url is None else "-peer"
    path = RESULTS / f"soak-{args.model}{suffix}.json"
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
    for o in outcomes:
        by_kind[o.kind][o.status] += 1
        by_variant[f"{o.kind} {o.variant}"][o.status] += 1
    verdicts = Counter(o.verdict for o in outcomes)
    valid = [o for o in outcomes if o.kind == "valid" and o.status == "200"]
    latencies = [o.seconds for o in valid]
    wers = [o.wer for o in valid if o.wer is not None]
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
        "status_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "status_by_variant": {k: dict(sorted(v.items())) for k, v in sorted(by_variant.items())},
        "counts": {
            name: verdicts.get(name, 0) for name in ("ok", "poor", "wrong", "5xx", "busy", "lost")
        },
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
        f"{lat['answered']} answers, mean WER {num(out['valid_mean_wer'], '.3f')}"
    )
    for kind, statuses in out["status_by_kind"].items():
        text = " ".join(f"{status}:{count}" for status, count in statuses.items())
        print(f"  {kind:<11} {sum(statuses.values()):>4}  {text}")
    counts = out["counts"]
    print("  " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    print(
        f"  RSS MB: start {num(start['rss_mb'], '.0f')}, after warm-up "
        f"{num(warm['rss_mb'], '.0f')}, end {num(end['rss_mb'], '.0f')} (growth "
        f"{num(out['rss_growth_after_warmup'], '+.1%')}), peak "
        f"{num(end['peak_rss_mb'], '.0f')}"
    )
    if out["rss_mb_floor_per_quarter"]:
        floors = ", ".join(f"{v:.0f}" for v in out["rss_mb_floor_per_quarter"])
        print(f"  RSS MB while running, lowest per quarter of the requests: {floors}")
    print(
        f"  fds: after warm-up {warm['fds']}, end {end['fds']}; TMPDIR files: start "
        f"{start['tmp_files']}, new after warm-up {out['tmp_files_new_after_warmup']}"
    )
    findings = out["server"]["log_findings"]
    if findings:
        print(
            f"  server log: {findings['client_gone_499']} 499s for "
            f"{out['status_by_kind'].get('disconnect', {}).get('closed', 0)} disconnects, "
            f"{findings['tracebacks']} tracebacks, {len(findings['error_lines'])} ERROR "
            f"lines; /hc at end {out['server']['health_status']}"
        )
    for problem in out["problems"][:10]:
        print(
            f"  ! #{problem['index']} {problem['kind']} {problem['variant']} "
            f"{problem['route']} -> {problem['status']}: {problem['problem']}"
        )
    if len(out["problems"]) > 10:
        print(f"  ! ... {len(out['problems']) - 10} more in the JSON")
    for name, check in out["criteria"].items():
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[check["pass"]]
        print(f"  {verdict}  {name}: {check['value']}")
    print(f"{'PASS' if out['pass'] else 'FAIL'}  (results: {path})")


if __name__ == "__main__":
    sys.exit(main())
