"""Task-queue run: N real clips queued at once through the task API of a live `asrd serve`.

    python bench/task_queue.py --tasks 20 --model tiny.en

Reports: all finished or not, FIFO order kept or not, WER over the clips, wall time, and the
server's resident memory (RSS) before submitting, at the peak while queued, and after.
Writes bench/results/queue-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

from conftest import CLIPS, AsrdServer, wer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()

    english = [c for c in CLIPS.values() if c.language == "en" and "transcoded" not in c.name]
    clips = [english[i % len(english)] for i in range(args.tasks)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = AsrdServer(
        {"MODEL_ID": args.model, "LOG_LEVEL": "WARNING"}, RESULTS / f"queue-{args.model}.log"
    )
    try:
        server.wait_ready()
        pid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.post("/asr", content=clips[0].read()).raise_for_status()  # settle allocations
            before = rss_mb(pid)
            peak = before
            stop = threading.Event()

            def watch() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, rss_mb(pid))
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            started = time.perf_counter()
            ids = []
            for clip in clips:
                response = http.post("/api/v1/transcribe", files={"file": (clip.name, clip.read())})
                response.raise_for_status()
                ids.append(response.json()["task_id"])
            results = []
            for task_id in ids:
                while True:
                    body = http.get(f"/api/v1/tasks/{task_id}").json()
                    if body["status"] in ("finished", "failed"):
                        results.append(body)
                        break
                    time.sleep(0.1)
            wall = time.perf_counter() - started
            stop.set()
            watcher.join()
            after = rss_mb(pid)
    finally:
        server.stop()

    finished = sum(r["status"] == "finished" for r in results)
    starts = [r["time_started"] for r in results]
    reference = " ".join(c.transcript for c in clips)
    hypothesis = " ".join(r["result"]["text"] for r in results if r["result"])
    audio = sum(c.duration for c in clips)
    out = {
        "benchmark": "queue",
        "model": args.model,
        "tasks": args.tasks,
        "finished": finished,
        "fifo_order_kept": starts == sorted(starts),
        "audio_seconds": audio,
        "wall_seconds": wall,
        "realtime_multiple": audio / wall,
        "wer": wer(reference, hypothesis),
        "rss_mb": {"before": before, "peak": peak, "after": after},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(out, indent=2))
    (RESULTS / f"queue-{args.model}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
