"""Which windows go into the next batch.

Windows are taken round-robin across the jobs waiting, one window each per round (a short
request is not stuck behind a long file), all with the same key: one language, task, word
timing choice and temperature per batch.
"""

from __future__ import annotations

from .packing import cost
from .settings import FALLBACK_TEMPERATURES, WINDOW_S, DecodeSettings
from .windows import Job, Window

BatchKey = tuple[str | None, str, bool, float]


def temperature(window: Window) -> float:
    """The temperature the window is decoded at next."""
    if window.job.options.temperature > 0:
        return window.job.options.temperature
    return FALLBACK_TEMPERATURES[window.temperature_index]


def batch_key(window: Window) -> BatchKey:
    """Windows decode together only if they agree on all of this."""
    options = window.job.options
    return (window.job.language, options.task, options.word_timestamps, temperature(window))


class RoundRobin:
    """Whose turn it is to lead the next batch (its first window sets the batch key)."""

    def __init__(self) -> None:
        self.next = 0

    def order(self, jobs: list[Job]) -> list[Job]:
        """`jobs`, starting at the one whose turn it is; the turn moves on by one."""
        self.next %= len(jobs)
        ordered = jobs[self.next :] + jobs[: self.next]
        self.next += 1
        return ordered


def pick_batch(
    order: list[Job], settings: DecodeSettings, background: list[Job] | None = None
) -> list[Window]:
    """The next batch from the jobs' queues, taken round-robin in `order`. The windows stay
    queued: each job's are the first ones in its queue, in order (the caller takes them).

    `background` jobs (live captions' partial re-decodes) lead a batch only when no other job
    waits; otherwise together they get one share, a window each, after the others' windows
    and only where those left room, so they never starve a request."""
    background = background or []
    if not order:
        return _pick(background, settings, len(background))
    if not order[0].pending:
        return []
    parts = len(order) + bool(background)
    batch = _pick(order, settings, parts)
    capacity = settings.batch_size * WINDOW_S - sum(cost(w, settings) for w in batch)
    share = max(1, settings.batch_size // parts)
    key = batch_key(order[0].pending[0])
    for job in background:
        if share <= 0 or capacity <= 0 or len(batch) >= settings.batch_size:
            break
        if job.pending and batch_key(job.pending[0]) == key:
            batch.append(job.pending[0])
            capacity -= cost(job.pending[0], settings)
            share -= 1
    return batch


def _pick(order: list[Job], settings: DecodeSettings, parts: int) -> list[Window]:
    """Round-robin over `order`, each job's share being a `parts`-th of the batch."""
    if not order or not order[0].pending:
        return []
    key = batch_key(order[0].pending[0])
    batch: list[Window] = []
    taken = dict.fromkeys(order, 0)
    # With several requests waiting, each gets an equal share of the batch: a long file
    # alone fills whole batches, but doesn't crowd out the requests that come along.
    share = max(1, settings.batch_size // parts)
    # Capacity in 30 s windows: short windows will be packed several to a window.
    capacity = settings.batch_size * WINDOW_S
    taking = True
    while taking and capacity > 0:
        taking = False
        for job in order:
            if taken[job] >= len(job.pending) or batch_key(job.pending[taken[job]]) != key:
                continue
            if job.max_per_batch is not None and taken[job] >= job.max_per_batch:
                continue
            if taken[job] >= share or (job.language is None and taken[job]):
                continue  # a job whose language is unknown yet sends one window
            window = job.pending[taken[job]]
            batch.append(window)
            taken[job] += 1
            capacity -= cost(window, settings)
            taking = True
            if capacity <= 0:
                break
    return batch


def preemptible(pack: list[Window]) -> bool:
    """Only inputs of long requests (several windows) give way to newcomers."""
    return all(len(window.job.windows) > 1 for window in pack)


def newcomers(arrived: list[Job], key: BatchKey) -> list[Job]:
    """The jobs just arrived whose first window can join a batch of `key`."""
    return [job for job in arrived if job.pending and batch_key(job.pending[0]) == key]
