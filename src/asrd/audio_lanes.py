"""The threads that decode audio and find its speech, off the event loop, for every model.

Short audio (the usual request) goes to a small pool; audio longer than LONG_AUDIO_S to a long
lane of its own, one at a time, so hours of audio (or a small file that holds them) never hold
up everyone else's clips. Every decoding reserves its samples' bytes in the server's
decoded-audio budget (MAX_DECODED_AUDIO_MB) before holding them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from .audio import SAMPLE_RATE, DecodedAudio, decode, probe_audio
from .budget import MemoryBudget
from .config import Settings

T = TypeVar("T")

# Audio longer than this is decoded, and has its speech found, in the long lane (one at a time).
LONG_AUDIO_S = 300


class _LongAudio(Exception):
    """Raised in the short lane by audio past LONG_AUDIO_S: it is decoded in the long lane."""


class AudioLanes:
    """Decoding and VAD threads, shared by every model the server serves."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.budget = MemoryBudget(settings.max_decoded_audio_bytes)
        # Decoding apart from inference, so a request can be decoded while another is
        # transcribed.
        self._short = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asrd-decode")
        # Long audio: decoded one at a time, and searched for speech one at a time in a lane
        # of its own (decoded audio waiting for its VAD holds memory: it must not queue behind
        # decodings that are waiting for memory).
        self._long = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-long")
        self._long_vad = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asrd-long-vad")
        self.on_stage: Callable[[str, float], None] | None = None  # metrics: decode, vad

    def _timed(self, stage: str, started: float) -> None:
        if self.on_stage is not None:
            self.on_stage(stage, time.perf_counter() - started)

    async def decode(self, data: bytes, *, wait_s: float | None = None) -> DecodedAudio:
        """Decode audio bytes to int16 samples (see `audio.decode`), within MAX_AUDIO_S,
        MAX_DECODE_CPU_S and the decoded-audio budget, which the samples hold until they are
        freed (waiting up to `wait_s` for room, else `BudgetExceeded`). Cancelling the call
        stops the decoding thread too.

        Audio whose headers say it is longer than LONG_AUDIO_S is decoded in the long lane;
        audio that turns out longer than it said is decoded again there (its first minutes
        cost a second or so in the short lane)."""
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        try:
            try:
                return await loop.run_in_executor(
                    self._short, self.decode_sync, data, wait_s, cancelled, True
                )
            except _LongAudio:
                return await loop.run_in_executor(
                    self._long, self.decode_sync, data, wait_s, cancelled, False
                )
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def decode_sync(
        self,
        data: bytes,
        wait_s: float | None = None,
        cancelled: threading.Event | None = None,
        short: bool = False,
    ) -> DecodedAudio:
        """Decode on this thread (`short`: give up with `_LongAudio` past LONG_AUDIO_S)."""
        reservation = self.budget.reservation()

        def reserve(nbytes: int) -> None:
            if short and reservation.nbytes + nbytes > LONG_AUDIO_S * SAMPLE_RATE * 2:
                raise _LongAudio  # longer than it said
            # Long audio leaves an eighth of the budget to short clips: bombs and long files
            # can't crowd out everyone else's requests.
            keep_free = 0 if short else self.budget.capacity // 8
            reservation.grow(nbytes, wait_s, keep_free)

        def declared(seconds: float) -> None:
            if short and seconds > LONG_AUDIO_S:
                raise _LongAudio  # says so: straight to the long lane

        started = time.perf_counter()
        try:
            audio = decode(
                data,
                max_duration_s=self.settings.max_audio_s,
                max_cpu_s=self.settings.max_decode_cpu_s,
                reserve=reserve,
                cancelled=cancelled,
                declared=declared,
            )
        except BaseException:
            reservation.release()
            raise
        finally:
            self._timed("decode", started)
        reservation.hold_until_freed(audio.samples)
        return audio

    async def probe(self, data: bytes) -> None:
        """Check, without decoding it all, that `data` holds an audio stream (`AudioError`)."""
        await asyncio.get_running_loop().run_in_executor(self._short, probe_audio, data)

    async def find_speech(self, samples: np.ndarray, cut: Callable[[np.ndarray], T]) -> T:
        """Run `cut(samples)` (VAD: the windows of a job) in the lane for its length."""
        long_audio = len(samples) > LONG_AUDIO_S * SAMPLE_RATE
        lane = self._long_vad if long_audio else self._short

        def timed_cut(samples: np.ndarray) -> T:
            started = time.perf_counter()
            try:
                return cut(samples)
            finally:
                self._timed("vad", started)

        return await asyncio.get_running_loop().run_in_executor(lane, timed_cut, samples)

    def close(self) -> None:
        for pool in (self._short, self._long, self._long_vad):
            pool.shutdown(wait=False, cancel_futures=True)
