"""What the scheduler does to jobs' queues and windows: taking a batch, making room for
newcomers, applying the checks' verdicts, handing out segments in order, failing and
dropping jobs."""

from __future__ import annotations

import logging

from .batching import preemptible
from .checks import Final, Retry, SecondPass, Silence, Solo, Verdict, check_pack, check_window
from .packing import Pack, fits, pack_batch, packable
from .results import Decoded, DecodedSegment
from .settings import DecodeSettings
from .windows import Job, Window

log = logging.getLogger(__name__)


def take(batch: list[Window]) -> None:
    """Take a picked batch off its jobs' queues (each job's first windows, in order)."""
    for window in batch:
        taken = window.job.pending.popleft()
        assert taken is window


def requeue(packs: list[Pack]) -> None:
    """Back to the front of their queues, in order."""
    for pack in reversed(packs):
        for window in reversed(pack):
            window.job.pending.appendleft(window)


def swap_in(
    joining: list[Window], waiting: list[Pack], done: list[Pack], settings: DecodeSettings
) -> list[Pack]:
    """Newcomers' windows (`joining`) join a batch being encoded; returns the inputs to encode
    next. They first fill the room left in its short windows' packs not encoded yet. In a
    batch of a long request, the rest take the place of its inputs not encoded yet (those go
    back to their queue), as far as the batch has room after the `done` ones: a newcomer
    waits one encoder pass, not a whole batch of the long file's windows. In a batch of short
    requests only, the rest wait for the next batch, where they are packed with the others
    that came meanwhile: one more input for a lone short request costs a whole encoder pass.
    Whatever doesn't join goes back to its queue."""
    long_batch = any(preemptible(pack) for pack in [*done, *waiting])
    kept = [pack for pack in waiting if not preemptible(pack)]
    requeue([pack for pack in waiting if preemptible(pack)])
    rest = fill(kept, joining, settings)
    capacity = max(0, settings.batch_size - len(done) - len(kept)) if long_batch else 0
    fresh = pack_batch(rest, settings)
    requeue(fresh[capacity:])
    return kept + fresh[:capacity]


def fill(packs: list[Pack], windows: list[Window], settings: DecodeSettings) -> list[Window]:
    """Add `windows` to the `packs` of short windows that have room; return those left."""
    rest = []
    for window in windows:
        for pack in packs:
            if all(packable(part, settings) for part in [*pack, window]) and fits(pack, window):
                pack.append(window)
                break
        else:
            rest.append(window)
    return rest


def settle(pack: Pack, decoded: Decoded, settings: DecodeSettings) -> None:
    """Check a decoded model input and carry out the verdicts on its windows."""
    if len(pack) == 1:
        apply(pack[0], check_window(pack[0], decoded, settings))
        return
    for window, verdict in zip(pack, check_pack(pack, decoded, settings), strict=True):
        apply(window, verdict)


def apply(window: Window, verdict: Verdict) -> None:
    """Carry out a check's verdict on the window (a window decoded again goes to the front
    of its job's queue: it is decoded in the next batch that takes its job's windows)."""
    queue = window.job.pending
    match verdict:
        case Silence():
            window.final, window.candidates = [], []
        case Retry(candidate):  # at the next temperature
            window.candidates.append(candidate)
            window.temperature_index += 1
            queue.appendleft(window)
        case Solo():
            window.solo = True
            queue.appendleft(window)
        case Final(segments):
            window.final, window.candidates = segments, []
        case SecondPass(segments, children):
            window.final, window.candidates = segments, []
            window.children += children
            for child in children:
                queue.appendleft(child)
            log.debug("%d windows of uncovered speech queued for a second pass", len(children))


def emit(job: Job) -> bool:
    """Hand out the segments of the job's windows completed since last time, in order (a
    window waits for those before it). True once every window's are out."""
    ready: list[DecodedSegment] = []
    while job.emitted < len(job.windows) and job.windows[job.emitted].complete:
        ready += job.windows[job.emitted].segments()
        job.emitted += 1
    if ready:
        job.results += ready
        if job.on_segments is not None:
            try:
                job.on_segments(ready)
            except Exception:  # the listener is gone (e.g. its event loop closed)
                log.debug("a job's segment listener failed", exc_info=True)
    return job.emitted == len(job.windows)


def fail(job: Job, exc: Exception) -> None:
    """The job ends with `exc` (it is dropped before the next batch)."""
    job.cancelled = True
    if not job.future.done():
        job.future.set_exception(exc)


def drop_if_cancelled(job: Job) -> bool:
    """Let go of a cancelled job (or one failed in an earlier batch): its queue, its audio,
    its future. True if it was dropped."""
    if job.cancelled or job.future.done():
        job.cancelled = True
        job.pending.clear()
        job.release_audio()
        job.future.cancel()
    return job.cancelled
