"""Where the time goes: a long file, then short clips from 8 clients, on a live `asrd serve`.

    python bench/profile.py --model tiny.en
    python bench/profile.py --model base --language en

Reads the server's own stage timings from /metrics before and after each phase
(`asrd_engine_seconds`: the model's scheduler thread; `asrd_audio_processing_seconds`: audio
decoding and VAD threads) and the server process's CPU time, and prints one table per phase:
seconds and share of the wall time. The scheduler thread's time not in any stage is `idle`
(waiting for work: uploads, decoding, VAD, or nothing to do). Writes
bench/results/profile-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import RESULTS, Target, encode, long_audio, machine, speech_clips

ENGINE = "asrd_engine_seconds_total"
AUDIO = "asrd_audio_processing_seconds_total"
STAGES = ("gather", "gate", "detect", "features", "encode", "decode", "align", "check", "other")


def stage_seconds(metrics: str, model: str) -> dict[str, float]:
    """The server's stage counters (engine stages of `model`, audio decode and VAD)."""
    found = dict.fromkeys([*STAGES, "audio decode", "vad"], 0.0)
    for line in metrics.splitlines():
        if line.startswith(ENGINE + "{") and f'model="{model}"' in line:
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            found[stage] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(AUDIO + "{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            found["audio decode" if stage == "decode" else stage] = float(line.rsplit(" ", 1)[1])
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(target: Target, run) -> dict:
    before, cpu_before = stage_seconds(metrics(target), target.model), cpu_seconds(target.pid)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    after, cpu_after = stage_seconds(metrics(target), target.model), cpu_seconds(target.pid)
    spent = {stage: after[stage] - before[stage] for stage in after}
    spent["idle (scheduler)"] = max(0.0, wall - sum(spent[s] for s in STAGES))
    return {"wall_s": wall, "server_cpu_s": cpu_after - cpu_before, "stages_s": spent}


def metrics(target: Target) -> str:
    return target.http.get("/metrics").text


def print_table(title: str, result: dict, cores: int) -> None:
    wall = result["wall_s"]
    print(f"\n{title}: wall {wall:.2f} s, server CPU {result['server_cpu_s']:.2f} s "
          f"({result['server_cpu_s'] / wall / cores * 100:.0f}% of {cores} cores)")  # fmt: skip
    for stage, seconds in result["stages_s"].items():
        print(f"  {stage:18} {seconds:7.2f} s  {seconds / wall * 100:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--language", help="sent with the short clips (default: none)")
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()

    clips = speech_clips("en", 2.0, 15.0)
    clips = [clips[i % len(clips)] for i in range(args.requests)]
    audio = [clip.read() for clip in clips]
    samples, _ = long_audio(300)
    long_file = encode(samples, "flac")
    target = Target(None, "asr", args.model)
    try:
        target.transcribe(audio[0])  # warm
        long_result = measure(target, lambda: target.transcribe(long_file))

        def short_clips() -> None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda a: target.transcribe(a, language=args.language), audio))

        short_result = measure(target, short_clips)
    finally:
        target.close()
    cores = machine()["cores"]
    print_table(f"long file ({len(samples) / 16000:.0f} s), {args.model}", long_result, cores)
    print_table(f"{len(clips)} short clips, 8 clients, {args.model}, language "
                f"{args.language or 'not sent'}", short_result, cores)  # fmt: skip
    out = {
        "benchmark": "profile",
        "model": args.model,
        "language": args.language,
        "long_file": long_result,
        "short_clips_8_clients": short_result,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"profile-{args.model}{'-' + args.language if args.language else ''}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
