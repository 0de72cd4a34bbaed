"""Long-file benchmark: asrd's HTTP API against the faster-whisper library, in one run.

    python bench/long.py --model tiny.en
    python bench/long.py --model base
    python bench/long.py --model base --url http://peer:8000 --flavor openai   # another server

Builds a ~5 minute file from the real English clips in tests/data (0.75 s gaps, repeated),
transcribes it with faster-whisper sequential and batched (16), each in its own process, and
with a live `asrd serve` over HTTP (or the server at --url). Prints realtime multiples, WER,
peak RSS and the ratios; writes bench/results/long-<model>.json and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, Target, encode, long_audio, machine, peak_rss_mb, wer


def timed(fn, runs: int) -> tuple[float, str]:
    times, text = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        text = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), text


def library_run(mode: str, model_id: str, threads: int, min_seconds: float, runs: int) -> dict:
    """faster-whisper used directly, as its README shows (run in a child process)."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from asrd.audio import decode_audio
    from asrd.models import resolve_model

    samples, reference = long_audio(min_seconds)
    # Exactly the audio asrd gets: the same flac file, decoded.
    samples = decode_audio(encode(samples, "flac"))
    path = resolve_model(model_id, Path.home() / ".cache" / "asrd", allow_download=False)
    import ctranslate2

    device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
    compute_type = "float16" if device == "cuda" else "int8"  # as asrd's COMPUTE_TYPE=auto
    model = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=threads)
    batched = BatchedInferencePipeline(model)

    def run() -> str:
        if mode == "sequential":
            segments, _ = model.transcribe(samples, beam_size=5)
        else:
            segments, _ = batched.transcribe(samples, batch_size=16, beam_size=5)
        return " ".join(s.text for s in segments)

    seconds, text = timed(run, runs)
    duration = len(samples) / 16000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "xrt": duration / seconds, "wer": wer(reference, text),
            "peak_rss_mb": peak}  # fmt: skip


def chart(results: dict, title: str, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(names, [results[n]["xrt"] for n in names], color="#4c72b0")
    left.set_xlabel("realtime multiple (higher is better)")
    right.barh(names, [results[n]["wer"] * 100 for n in names], color="#dd8452")
    right.set_xlabel("WER % (lower is better)")
    right.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--min-seconds", type=float, default=300)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--url", help="benchmark this server instead of starting asrd")
    parser.add_argument("--flavor", choices=["openai", "asr"], default="asr")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="asrd setting (repeat)"
    )
    parser.add_argument("--skip-library", action="store_true", help="only asrd (memory runs)")
    parser.add_argument("--library", choices=["sequential", "batched16"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.library:  # child process: one library configuration, result as JSON
        result = library_run(args.library, args.model, args.threads, args.min_seconds, args.runs)
        print(json.dumps(result))
        return

    samples, reference = long_audio(args.min_seconds)
    duration = len(samples) / 16000
    print(f"audio: {duration:.1f} s, {len(reference.split())} reference words, model {args.model}")
    results = {}
    for mode in () if args.skip_library else ("sequential", "batched16"):
        child = subprocess.run(
            [sys.executable, __file__, "--library", mode, "--model", args.model,
             "--threads", str(args.threads), "--min-seconds", str(args.min_seconds),
             "--runs", str(args.runs)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[f"faster-whisper {mode}"] = json.loads(child.stdout.strip().splitlines()[-1])

    flac = encode(samples, "flac")
    name = "asrd /asr (HTTP)" if args.url is None else f"{args.url} ({args.flavor})"
    env = {"CPU_THREADS": str(args.threads), **dict(item.split("=", 1) for item in args.env)}
    target = Target(args.url, args.flavor, args.model, env)
    try:
        seconds, text = timed(lambda: target.transcribe(flac), args.runs)
        peak = peak_rss_mb(target.pid) if target.pid else None
    finally:
        target.close()
    results[name] = {"seconds": seconds, "xrt": duration / seconds, "wer": wer(reference, text),
                     "peak_rss_mb": peak}  # fmt: skip

    print(f"{'system':30} {'xRT':>7} {'WER':>7} {'peak RSS':>9}")
    for system, row in results.items():
        rss = f"{row['peak_rss_mb']:.0f} MB" if row["peak_rss_mb"] else "-"
        print(f"{system:30} {row['xrt']:6.1f}x {row['wer'] * 100:6.1f}% {rss:>9}")
    ours = results[name]
    if args.skip_library:
        print(json.dumps({"machine": machine(), **ours}, indent=1))
        return
    ratios = {
        "xrt_vs_batched16": ours["xrt"] / results["faster-whisper batched16"]["xrt"],
        "xrt_vs_sequential": ours["xrt"] / results["faster-whisper sequential"]["xrt"],
        "wer_minus_sequential_points": (ours["wer"] - results["faster-whisper sequential"]["wer"])
        * 100,
    }
    print(json.dumps(ratios, indent=1))
    stamp = machine()
    out = {
        "benchmark": "long",
        "model": args.model,
        "audio_seconds": duration,
        "reference_words": len(reference.split()),
        "runs": args.runs,
        "machine": stamp,
        "results": results,
        "ratios": ratios,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.url is None else "-peer"
    (RESULTS / f"long-{args.model}{suffix}.json").write_text(json.dumps(out, indent=2))
    title = (f"{duration:.0f} s of real speech, {args.model}, {stamp['cpu']} x{stamp['cores']}"
             f"{', ' + stamp['gpu'] if stamp['gpu'] else ''}")  # fmt: skip
    chart(results, title, RESULTS / f"long-{args.model}{suffix}.png")
    print(f"wrote {RESULTS}/long-{args.model}{suffix}.json and .png")


if __name__ == "__main__":
    main()
