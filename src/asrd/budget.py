"""Server-wide memory budgets: decoded audio (MAX_DECODED_AUDIO_MB) and request bodies
(MAX_UPLOADS_IN_MEMORY_MB).

Per-request limits don't bound the whole server: a 44 KB file can hold hours of silence, and
a few of them at once would take gigabytes. Every decoding reserves its samples' bytes here
before holding them, and gives them back when the samples are freed (a finalizer on the
array: however the request ends, and whoever held the audio last, the scheduler included).
Request bodies are reserved as they arrive and given back when the request ends.
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np


class BudgetExceeded(Exception):
    """No room for more decoded audio right now (`fits_ever`: it would fit an idle server)."""

    def __init__(self, capacity_bytes: int, *, fits_ever: bool):
        limit = f"{capacity_bytes / 1024 / 1024:g} MB (MAX_DECODED_AUDIO_MB)"
        if fits_ever:
            message = f"the server holds as much decoded audio as it may ({limit}); retry shortly"
        else:
            message = f"the decoded audio is larger than the server's whole budget of {limit}"
        super().__init__(message)
        self.fits_ever = fits_ever


class MemoryBudget:
    """Bytes reserved by reservations, never more than `capacity_bytes` in all."""

    def __init__(self, capacity_bytes: int, wait_s: float = 5.0):
        self.capacity, self.wait_s = capacity_bytes, wait_s
        self.used = 0
        self._room = threading.Condition()

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, nbytes: int, wait_s: float | None, keep_free: int = 0) -> None:
        limit = self.capacity - keep_free
        if nbytes > limit:
            raise BudgetExceeded(self.capacity, fits_ever=False)
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        with self._room:
            while self.used + nbytes > limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BudgetExceeded(self.capacity, fits_ever=True)
                self._room.wait(left)
            self.used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._room:
            self.used -= nbytes
            self._room.notify_all()


class Reservation:
    """One holder's share of a budget: it grows as the audio is decoded (or a body arrives),
    is trimmed to the samples' exact size, and is given back when they are freed (or at once
    by `release`)."""

    def __init__(self, budget: MemoryBudget):
        self.budget, self.nbytes = budget, 0
        self._lock = threading.Lock()

    def grow(self, nbytes: int, wait_s: float | None = None, keep_free: int = 0) -> None:
        """Reserve `nbytes` more, waiting up to `wait_s` (default: the budget's) for room,
        leaving `keep_free` bytes of the budget to others (short audio, next to long)."""
        if self.nbytes + nbytes > self.budget.capacity - keep_free:
            raise BudgetExceeded(self.budget.capacity, fits_ever=False)
        self.budget._take(nbytes, wait_s, keep_free)
        with self._lock:
            self.nbytes += nbytes

    def trim(self, nbytes: int) -> None:
        """Keep only `nbytes` reserved."""
        with self._lock:
            extra, self.nbytes = max(self.nbytes - nbytes, 0), min(self.nbytes, nbytes)
        if extra:
            self.budget._give(extra)

    def release(self) -> None:
        self.trim(0)

    def hold_until_freed(self, samples: np.ndarray) -> None:
        """Keep the reservation while `samples` (or any view of it) is alive."""
        self.trim(samples.nbytes)
        weakref.finalize(samples, self.release)
