"""Where a model's time goes: seconds per stage of the scheduler thread, summed since it
started (reported in `/metrics` as `asrd_engine_seconds`, and read by the benchmarks' profile).

Stages: `gather` (waiting for a batch's neighbours to arrive), `gate` (waiting for a turn on
a CPU shared with other models), `detect` (language detection at admission), `features`
(log-mel spectrograms), `encode`, `decode` (the decoder, with timestamps), `align` (word
timings), `check` (Whisper's checks, putting results in order, handing them out), `other`
(the rest of a step: picking and packing batches, admission). Idle time is not counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

STAGES = ("gather", "gate", "detect", "features", "encode", "decode", "align", "check", "other")


class StageClock:
    """Seconds per stage. Written by one thread (the scheduler's); `on_stage` (a metrics hook)
    gets each measurement as it is made."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.on_stage: Callable[[str, float], None] | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        if self.on_stage is not None:
            self.on_stage(name, seconds)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """A scheduler step: the time no named stage inside it accounts for is `other`."""
        named = sum(self.seconds.values())
        started = time.perf_counter()
        try:
            yield
        finally:
            inside = sum(self.seconds.values()) - named
            self.add("other", max(0.0, time.perf_counter() - started - inside))
