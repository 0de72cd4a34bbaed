"""Live transcription benchmark: 1, 4 and 8 concurrent Realtime API sessions streaming real
speech at real-time pace (24 kHz PCM in 100 ms appends, server VAD), then 4 sessions while a
long file is being transcribed over HTTP.

    python bench/realtime.py --model tiny.en
    python bench/realtime.py --model tiny.en --url ws://peer:8000/v1   # another server

Per level: p50/p95 of the time from a turn's speech end (the `audio_end_ms` of its
`speech_stopped`, as the wall time that audio was sent; it includes the 500 ms of silence that
ends a turn) to its `completed`, and from its speech start (`audio_start_ms`) to its first
delta; WER of each session's completed text (Whisper's English normaliser). With the file:
the file's transcription time against the same file alone (the sessions' cost to it). Prints
the ratios against issue 16's targets, and, as the reference of the same run, the latency of
the same clips sent as plain file requests one at a time (what one decode costs on the machine
as it is then); writes bench/results/realtime-<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import threading
import time

import av
import numpy as np
import websockets
from common import RESULTS, AsrdServer, encode, long_audio, machine, speech_clips, wer

from conftest import decode_pcm

CHUNK_S = 0.1
GAP_S = 1.5
CLIPS_PER_SESSION = 5
TARGETS = {1: 1.0, 4: 2.0}  # p95 speech end -> completed, seconds (issue 16, this machine)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def pcm24(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = 16_000
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24_000)
    frames = resampler.resample(frame) + resampler.resample(None)
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)


def session_audio(clips: list, offset: int) -> tuple[bytes, str]:
    """0.5 s of silence, then CLIPS_PER_SESSION clips (rotated by `offset`) each followed by
    GAP_S of silence: the 24 kHz stream and its reference text."""
    chosen = [clips[(offset + i) % len(clips)] for i in range(CLIPS_PER_SESSION)]
    pieces = [np.zeros(8000, np.float32)]
    for clip in chosen:
        pieces += [decode_pcm(clip.read()), np.zeros(int(GAP_S * 16_000), np.float32)]
    return pcm24(np.concatenate(pieces)), " ".join(c.transcript for c in chosen)


async def run_session(url: str, audio: bytes, headers: dict) -> dict:
    """Stream `audio` at real-time pace; the turns' latencies and the completed text."""
    events: list[tuple[float, dict]] = []
    sent_at: list[float] = []  # wall time of each chunk
    chunk = int(48_000 * CHUNK_S)
    async with websockets.connect(
        url + "/realtime?intent=transcription", additional_headers=headers, max_size=None
    ) as ws:

        async def read() -> None:
            async for raw in ws:
                events.append((time.monotonic(), json.loads(raw)))

        reader = asyncio.create_task(read())
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription",
            "audio": {"input": {"transcription": {"language": "en"}}}}}))  # fmt: skip
        started = time.monotonic()
        for index, start in enumerate(range(0, len(audio), chunk)):
            await asyncio.sleep(max(0.0, started + index * CHUNK_S - time.monotonic()))
            piece = base64.b64encode(audio[start : start + chunk]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            sent_at.append(time.monotonic())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stopped = sum(e["type"] == "input_audio_buffer.speech_stopped" for _, e in events)
            completed = sum(e["type"].endswith("transcription.completed") for _, e in events)
            if stopped and completed >= stopped:
                break
            await asyncio.sleep(0.1)
        reader.cancel()

    def wall(audio_ms: int) -> float:
        """When the chunk holding that audio was sent (the end of the chunk)."""
        index = min(len(sent_at) - 1, max(0, audio_ms // int(CHUNK_S * 1000)))
        return sent_at[index]

    by_item: dict[str, dict] = {}
    for at, event in events:
        item = event.get("item_id")
        if item is None:
            continue
        turn = by_item.setdefault(item, {})
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            turn["start"] = wall(event["audio_start_ms"])
        elif kind == "input_audio_buffer.speech_stopped":
            turn["end"] = wall(event["audio_end_ms"])
        elif kind.endswith("transcription.delta") and "first_delta" not in turn:
            turn["first_delta"] = at
        elif kind.endswith("transcription.completed"):
            turn["completed"], turn["text"] = at, event["transcript"]
    turns = [t for t in by_item.values() if "completed" in t and "end" in t]
    return {
        "end_to_completed": [t["completed"] - t["end"] for t in turns],
        "start_to_first_delta": [
            t["first_delta"] - t["start"] for t in turns if "first_delta" in t and "start" in t
        ],
        "turns": len(turns),
        "text": " ".join(t["text"] for t in turns),
    }


async def run_level(url: str, clips: list, sessions: int, headers: dict) -> dict:
    streams = [session_audio(clips, i) for i in range(sessions)]
    results = await asyncio.gather(*(run_session(url, audio, headers) for audio, _ in streams))
    ends = [x for r in results for x in r["end_to_completed"]]
    firsts = [x for r in results for x in r["start_to_first_delta"]]
    errors = [wer(reference, r["text"]) for (_, reference), r in zip(streams, results, strict=True)]
    return {
        "sessions": sessions,
        "turns": sum(r["turns"] for r in results),
        "end_to_completed_p50": percentile(ends, 50),
        "end_to_completed_p95": percentile(ends, 95),
        "start_to_first_delta_p50": percentile(firsts, 50),
        "start_to_first_delta_p95": percentile(firsts, 95),
        "turns_with_a_delta": len(firsts),
        "wer": statistics.mean(errors),
    }


def reference_latency(http_url: str, clips: list, model: str) -> list[float]:
    """The same clips as plain file requests, one at a time (`language=en`): what one
    decode of a turn costs on this machine in this run (other work on it slows both)."""
    import httpx

    latencies = []
    with httpx.Client(timeout=120) as http:
        for clip in clips[: CLIPS_PER_SESSION * 2]:
            started = time.perf_counter()
            response = http.post(
                http_url + "/v1/audio/transcriptions",
                files={"file": (clip.name, clip.read())},
                data={"model": model, "language": "en"},
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def transcribe_file(http_url: str, data: bytes, model: str, out: dict) -> None:
    import httpx

    started = time.perf_counter()
    response = httpx.post(
        http_url + "/v1/audio/transcriptions",
        files={"file": ("long.flac", data)},
        data={"model": model, "language": "en"},
        timeout=3600,
    )
    response.raise_for_status()
    out["seconds"] = time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--url", help="ws://host:port/v1 of a running server (default: start one)")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--file-seconds", type=float, default=120, help="0: no file run")
    args = parser.parse_args()
    clips = speech_clips("en", 2.0, 12.0)
    server = None
    url = args.url
    if url is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        server = AsrdServer({"MODEL_ID": args.model, "LOG_LEVEL": "WARNING"},
                            RESULTS / f"asrd-realtime-{args.model}.log")  # fmt: skip
        server.wait_ready()
        url = server.url.replace("http://", "ws://") + "/v1"
    http_url = url.replace("ws://", "http://").removesuffix("/v1")
    headers: dict = {}
    # Other work on the machine skews every number: the load average is kept with them.
    report: dict = {"machine": machine(), "model": args.model, "levels": [],
                    "load_before": os.getloadavg()}  # fmt: skip
    try:
        reference = reference_latency(http_url, clips, args.model)
        report["file_request_p50"] = percentile(reference, 50)
        report["file_request_p95"] = percentile(reference, 95)
        for level in [int(x) for x in args.levels.split(",")]:
            result = asyncio.run(run_level(url, clips, level, headers))
            report["levels"].append(result)
            print(json.dumps(result))
        if args.file_seconds:
            samples, _ = long_audio(args.file_seconds)
            data = encode(samples, "flac")
            alone: dict = {}
            transcribe_file(http_url, data, args.model, alone)
            together: dict = {}
            worker = threading.Thread(target=transcribe_file,
                                      args=(http_url, data, args.model, together))  # fmt: skip
            worker.start()
            with_file = asyncio.run(run_level(url, clips, 4, headers))
            worker.join()
            with_file["file_seconds_alone"] = alone["seconds"]
            with_file["file_seconds_with_sessions"] = together["seconds"]
            report["with_file"] = with_file
            print(json.dumps(with_file))
    finally:
        if server is not None:
            server.stop()
    report["load_after"] = os.getloadavg()
    print()
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    p50, p95 = report["file_request_p50"], report["file_request_p95"]
    print(f"reference: the same clips as file requests, one at a time: p50 {p50:.2f} s, "
          f"p95 {p95:.2f} s")  # fmt: skip
    print("| sessions | turns | end->completed p50 | p95 | start->first delta p50 | p95 | WER |")
    print("|---|---|---|---|---|---|---|")
    rows = report["levels"]
    if "with_file" in report:
        rows = [*rows, {**report["with_file"], "sessions": "4 + file"}]
    for row in rows:
        print(f"| {row['sessions']} | {row['turns']} | {row['end_to_completed_p50']:.2f} s | "
              f"{row['end_to_completed_p95']:.2f} s | {row['start_to_first_delta_p50']:.2f} s | "
              f"{row['start_to_first_delta_p95']:.2f} s | {row['wer']:.1%} |")  # fmt: skip
    for row in report["levels"]:
        target = TARGETS.get(row["sessions"])
        if target:
            p95 = row["end_to_completed_p95"]
            verdict = "met" if p95 < target else "NOT met"
            print(f"{row['sessions']} session(s): p95 end->completed {p95:.2f} s, target "
                  f"{target:g} s: {verdict} ({p95 / target:.2f}x the target)")  # fmt: skip
    wf = report.get("with_file")
    if wf:
        print(
            f"file of {args.file_seconds:g} s: {wf['file_seconds_alone']:.1f} s alone, "
            f"{wf['file_seconds_with_sessions']:.1f} s beside 4 sessions "
            f"({wf['file_seconds_with_sessions'] / wf['file_seconds_alone']:.2f}x)"
        )
    (RESULTS / f"realtime-{args.model}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
