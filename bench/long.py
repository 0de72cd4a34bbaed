"""Long-file benchmark: asrd's HTTP API against the faster-whisper library, in one run.

    python bench/long.py --model tiny.en
    python bench/long.py --model base

Builds a ~5 minute file from the real English clips in tests/data (0.75 s gaps, repeated),
then transcribes it with faster-whisper sequential, faster-whisper batched (16), and a live
`asrd serve` over HTTP. Prints realtime multiples, WER and the ratios, and writes
bench/results/long-<model>.json stamped with the machine and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from asrd.models import resolve_model  # noqa: E402

from conftest import AsrdServer, encode, long_english_audio, wer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or None  # fmt: skip
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("asrd", "faster-whisper", "ctranslate2")},
    }


def timed(fn, runs: int) -> tuple[float, str]:
    times, text = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        text = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), text


def measure_library(model_id: str, threads: int, samples, reference: str, runs: int) -> dict:
    """faster-whisper used directly, as its README shows: sequential, and batched (16)."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    duration = len(samples) / 16000
    path = resolve_model(model_id, Path.home() / ".cache" / "asrd", allow_download=False)
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
    batched = BatchedInferencePipeline(model)
    audio = samples.astype(np.float32)

    def sequential() -> str:
        segments, _ = model.transcribe(audio, beam_size=5)
        return " ".join(s.text for s in segments)

    def batched16() -> str:
        segments, _ = batched.transcribe(audio, batch_size=16, beam_size=5)
        return " ".join(s.text for s in segments)

    results = {}
    systems = {"faster-whisper sequential": sequential, "faster-whisper batched16": batched16}
    for name, fn in systems.items():
        seconds, text = timed(fn, runs)
        results[name] = {"seconds": seconds, "xrt": duration / seconds, "wer": wer(reference, text)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--min-seconds", type=float, default=300)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    repeats = 1
    samples, reference = long_english_audio(repeats=repeats)
    while len(samples) / 16000 < args.min_seconds:
        repeats += 1
        samples, reference = long_english_audio(repeats=repeats)
    duration = len(samples) / 16000
    flac = encode(samples, "flac")
    print(f"audio: {duration:.1f} s, {len(reference.split())} reference words, model {args.model}")

    results = measure_library(args.model, args.threads, samples, reference, args.runs)

    log = RESULTS / f"asrd-{args.model}.log"
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = AsrdServer({"MODEL_ID": args.model, "CPU_THREADS": str(args.threads),
                         "LOG_LEVEL": "WARNING"}, log)  # fmt: skip
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=3600) as client:

            def via_http() -> str:
                response = client.post("/asr", content=flac)
                response.raise_for_status()
                return response.json()["text"]

            seconds, text = timed(via_http, args.runs)
        results["asrd /asr (HTTP)"] = {
            "seconds": seconds, "xrt": duration / seconds, "wer": wer(reference, text),
        }  # fmt: skip
    finally:
        server.stop()

    print(f"{'system':28} {'xRT':>7} {'WER':>7}")
    for name, row in results.items():
        print(f"{name:28} {row['xrt']:6.1f}x {row['wer'] * 100:6.1f}%")
    asrd = results["asrd /asr (HTTP)"]
    ratios = {
        "xrt_vs_batched16": asrd["xrt"] / results["faster-whisper batched16"]["xrt"],
        "xrt_vs_sequential": asrd["xrt"] / results["faster-whisper sequential"]["xrt"],
        "wer_minus_sequential_points": (asrd["wer"] - results["faster-whisper sequential"]["wer"])
        * 100,
    }
    print(json.dumps(ratios, indent=1))
    out = {
        "benchmark": "long",
        "model": args.model,
        "audio_seconds": duration,
        "reference_words": len(reference.split()),
        "runs": args.runs,
        "machine": machine(),
        "results": results,
        "ratios": ratios,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    target = RESULTS / f"long-{args.model}.json"
    target.write_text(json.dumps(out, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
