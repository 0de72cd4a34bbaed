"""The scheduler without a model: cancellation, the thread's start, newcomers joining a batch."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from asrd.compute import ComputeGate
from asrd.decoding import DecodeSettings, Job, Scheduler
from asrd.decoding.windows import NO_AUDIO
from asrd.transcript import TranscribeOptions


def job(windows: int = 2) -> Job:
    made = Job(samples=np.ones(16_000, np.int16), options=TranscribeOptions(), windows=[])
    made.windows = [made.window_at(i * 30.0, (i + 1) * 30.0, []) for i in range(windows)]
    return made


class FakeWhisper:
    """Enough of the adapter for admission: an English-only model."""

    multilingual = False

    def tokenizer(self, task: str, language: str) -> object:
        return object()


def admitted(scheduler: Scheduler, *jobs: Job) -> None:
    for made in jobs:
        scheduler._admit(made)


def test_a_cancelled_job_is_dropped_with_its_audio_and_its_future_cancelled() -> None:
    scheduler = Scheduler(DecodeSettings())
    scheduler._whisper = FakeWhisper  # type: ignore[method-assign]
    keep, cancel = job(), job()
    admitted(scheduler, keep, cancel)
    assert scheduler.job_count == 2 and keep.language == "en"
    cancel.cancel()
    batch = scheduler._pick_batch()
    assert all(window.job is keep for window in batch)
    assert scheduler._jobs == [keep] and scheduler.job_count == 1
    assert cancel.samples is NO_AUDIO and not cancel.pending and cancel.future.cancelled()
    assert keep.samples is not NO_AUDIO


def test_a_job_cancelled_before_admission_never_starts() -> None:
    scheduler = Scheduler(DecodeSettings(batch_wait_ms=0))
    scheduler.start()
    scheduler.start()  # idempotent: still one thread
    try:
        made = job()
        made.cancel()
        scheduler.submit(made)
        with pytest.raises(concurrent.futures.CancelledError):
            made.future.result(timeout=5)
        assert made.samples is NO_AUDIO and scheduler.job_count == 0
    finally:
        scheduler.stop()


def test_the_thread_starts_with_start_not_construction() -> None:
    scheduler = Scheduler(DecodeSettings(), ComputeGate(concurrent=True))
    assert scheduler._thread is None
    scheduler.start()
    thread = scheduler._thread
    scheduler.start()
    assert scheduler._thread is thread and thread is not None and thread.is_alive()
    scheduler.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_newcomer_takes_the_place_of_the_inputs_not_encoded_yet() -> None:
    scheduler = Scheduler(DecodeSettings(batch_size=3))
    scheduler._whisper = FakeWhisper  # type: ignore[method-assign]
    long = job(5)
    admitted(scheduler, long)
    batch = scheduler._pick_batch()
    assert batch == long.windows[:3]
    done, waiting = [[batch[0]]], [[batch[1]], [batch[2]]]
    newcomer = job(1)
    scheduler.submit(newcomer)  # the thread isn't started: it stays in the intake
    encode_next = scheduler._let_newcomers_in(waiting, done)
    assert encode_next == [[newcomer.windows[0]]]
    assert list(long.pending) == long.windows[1:]  # the windows not encoded went back, in order
    assert newcomer.windows[0] in scheduler._in_flight and not scheduler._intake


def test_newcomers_join_at_every_pass_and_earlier_ones_keep_their_place() -> None:
    """Short requests arrive one after another while a long file's batch is being encoded:
    each joins at the next pass, the long file's inputs not encoded yet make room, and the
    newcomers already in the batch keep their place."""
    scheduler = Scheduler(DecodeSettings(batch_size=4, pack_windows=False))
    scheduler._whisper = FakeWhisper  # type: ignore[method-assign]
    long = job(6)
    admitted(scheduler, long)
    batch = scheduler._pick_batch()
    done, waiting = [[batch[0]]], [[w] for w in batch[1:]]
    first, other, last = job(1), job(1), job(1)
    scheduler.submit(first)
    scheduler.submit(other)
    waiting = scheduler._let_newcomers_in(waiting, done)
    assert waiting == [[first.windows[0]], [other.windows[0]]]
    assert list(long.pending) == long.windows[1:]  # back in their queue, in order
    done.append(waiting.pop(0))  # `first` is encoded; `last` arrives
    scheduler.submit(last)
    waiting = scheduler._let_newcomers_in(waiting, done)
    assert waiting == [[other.windows[0]], [last.windows[0]]]
    assert {w for j in (first, other, last) for w in j.windows} <= set(scheduler._in_flight)


def short(seconds: float) -> Job:
    made = Job(samples=np.ones(16_000, np.int16), options=TranscribeOptions(), windows=[])
    made.windows = [made.window_at(0.0, seconds, [(0.0, seconds)])]
    return made


def test_in_a_batch_of_short_requests_newcomers_fill_packs_or_wait_for_the_next() -> None:
    """A newcomer of its own would cost a whole encoder pass: it goes into a pack not encoded
    yet that has room, or waits to be packed with the others in the next batch."""
    scheduler = Scheduler(DecodeSettings(batch_size=4))
    scheduler._whisper = FakeWhisper  # type: ignore[method-assign]
    first, second = short(12.0), short(5.0)
    admitted(scheduler, first, second)
    assert scheduler._pick_batch() == [first.windows[0], second.windows[0]]
    done, waiting = [[second.windows[0]]], [[first.windows[0]]]
    fits, too_long = short(6.0), short(14.0)
    scheduler.submit(fits)
    scheduler.submit(too_long)
    encode_next = scheduler._let_newcomers_in(waiting, done)
    assert encode_next == [[first.windows[0], fits.windows[0]]]  # 12 + 2 + 6 <= 30
    assert list(too_long.pending) == too_long.windows  # 12 + 2 + 6 + 2 + 14 > 30: next batch
    assert fits.windows[0] in scheduler._in_flight
    assert too_long.windows[0] not in scheduler._in_flight
