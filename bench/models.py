"""Two models in one server: throughput and memory against one model per server, in one run.

    python bench/models.py                       # tiny.en (MODEL_ID) and base (MODELS)
    python bench/models.py --requests 48

Throughput: the same requests (real short clips, half for each model) from 8 clients. The
reference is each model's half run alone, with the same 8 clients, on a server that serves that
model only; their times add up to what the two halves cost one after the other. asrd with both
models, the requests interleaved, should take no longer: ratio = (alone_a + alone_b) / mixed.

Memory, all in the two-model server's process: RSS after tiny.en's half alone (base not
loaded yet: the one-model figure), after the mixed run (both loaded), and once `base` is
unloaded (DELETE /api/ps/base), which should be back within 50 MB of the one-model figure.
(The one-model server's RSS is reported too; it did half the work, so it is lower.)
Writes bench/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import CLIPS, RESULTS, AsrdServer, machine, wer

VARIANT_TAGS = ("transcoded", "_8k", "_44k", "law", "_16k")
SHORT = [
    c
    for c in CLIPS.values()
    if c.language == "en" and c.duration < 12 and not any(t in c.name for t in VARIANT_TAGS)
]
ADMIN = {"Authorization": "Bearer bench-admin"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(models: list[str], name: str) -> AsrdServer:
    env = {"MODEL_ID": models[0], "MODELS": ",".join(models[1:]), "LOG_LEVEL": "WARNING",
           "ADMIN_API_KEYS": "bench-admin"}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    server = AsrdServer(env, RESULTS / f"asrd-models-{name}.log")
    server.wait_ready()
    return server


def run(url: str, work: list[tuple], clients: int = 8) -> dict:
    """`work`: (clip, model) pairs, sent by `clients` concurrent clients."""
    texts = [""] * len(work)

    def one(index: int) -> None:
        clip, model = work[index]
        response = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": model},
                              files={"file": (clip.name, clip.read())}, timeout=600)  # fmt: skip
        response.raise_for_status()
        texts[index] = response.json()["text"]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(work))))
    wall = time.perf_counter() - started
    audio = sum(clip.duration for clip, _ in work)
    return {
        "requests": len(work),
        "audio_s": audio,
        "wall_s": wall,
        "audio_per_wall_second": audio / wall,
        "wer": wer(" ".join(c.transcript for c, _ in work), " ".join(texts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()
    first, second = args.models.split(",")
    clips = [SHORT[i % len(SHORT)] for i in range(args.requests)]
    mixed = [(clip, (first, second)[i % 2]) for i, clip in enumerate(clips)]
    halves = {model: [(c, m) for c, m in mixed if m == model] for model in (first, second)}

    alone, rss_one_server = {}, None
    for model in (first, second):
        server = start([model], model)
        try:
            run(server.url, halves[model][:2])  # warm
            alone[model] = run(server.url, halves[model])
            if model == first:
                rss_one_server = rss_mb(server.process.pid)
        finally:
            server.stop()

    server = start([first, second], "both")
    try:
        run(server.url, halves[first])  # the first model alone: the one-model figure
        time.sleep(2)  # idle: memory given back
        rss_one = rss_mb(server.process.pid)
        run(server.url, mixed[:4])  # loads the second model, warms both
        both = run(server.url, mixed)
        rss_both = rss_mb(server.process.pid)
        unloaded = httpx.delete(f"{server.url}/api/ps/{second}", headers=ADMIN, timeout=60)
        unloaded.raise_for_status()
        time.sleep(3)  # the weights are freed and given back off the event loop
        rss_after_unload = rss_mb(server.process.pid)
    finally:
        server.stop()

    sequential = alone[first]["wall_s"] + alone[second]["wall_s"]
    out = {
        "benchmark": "models",
        "models": [first, second],
        "clients": 8,
        "alone": alone,
        "both_interleaved": both,
        "throughput_ratio_vs_one_model_per_server": sequential / both["wall_s"],
        "rss_mb": {
            f"one_model_server_{first}": rss_one_server,
            f"one_model_{first}": rss_one,
            "both_loaded": rss_both,
            f"after_unloading_{second}": rss_after_unload,
            "after_unload_minus_one_model": rss_after_unload - (rss_one or 0),
        },
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(out, indent=2))
    (RESULTS / "models.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
