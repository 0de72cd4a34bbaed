"""Picking the next batch: round-robin across jobs, equal shares, one key per batch."""

from __future__ import annotations

from asrd.decoding import DecodeSettings, Job
from asrd.decoding.batching import RoundRobin, batch_key, pick_batch, temperature
from asrd.decoding.windows import NO_AUDIO, Window
from asrd.transcript import TranscribeOptions


def job(windows: int, seconds: float = 30.0, language: str | None = "en", **options) -> Job:
    made = Job(samples=NO_AUDIO, options=TranscribeOptions(**options), windows=[])
    made.language = language
    made.windows = [made.window_at(i * seconds, (i + 1) * seconds, []) for i in range(windows)]
    made.pending.extend(made.windows)
    return made


def owners(batch: list[Window], jobs: list[Job]) -> list[int]:
    return [jobs.index(window.job) for window in batch]


def test_jobs_take_turns_leading_the_batch() -> None:
    jobs = [job(1), job(1), job(1)]
    turns = RoundRobin()
    assert [turns.order(jobs)[0] for _ in range(4)] == [jobs[0], jobs[1], jobs[2], jobs[0]]
    # Fewer jobs than the turn counter: it wraps around.
    turns.next = 5
    assert turns.order(jobs[:2]) == [jobs[1], jobs[0]]


def test_windows_are_taken_round_robin_one_per_job_per_round() -> None:
    jobs = [job(3), job(3)]
    batch = pick_batch(jobs, DecodeSettings(batch_size=4))
    assert owners(batch, jobs) == [0, 1, 0, 1]
    assert [w.start for w in batch] == [0.0, 0.0, 30.0, 30.0]  # each job's first windows


def test_picking_leaves_the_queues_alone() -> None:
    jobs = [job(3), job(1)]
    pick_batch(jobs, DecodeSettings(batch_size=4))
    assert [len(j.pending) for j in jobs] == [3, 1]


def test_each_job_gets_an_equal_share() -> None:
    jobs = [job(10), job(10), job(10)]
    batch = pick_batch(jobs, DecodeSettings(batch_size=6))
    assert sorted(owners(batch, jobs)) == [0, 0, 1, 1, 2, 2]


def test_a_long_job_does_not_starve_short_ones() -> None:
    long, short = job(50), job(1)
    batch = pick_batch([long, short], DecodeSettings(batch_size=6))
    assert short.windows[0] in batch
    assert owners(batch, [long, short]).count(0) == 3  # its share, not the whole batch
    # Alone, a long job fills whole batches.
    assert len(pick_batch([long], DecodeSettings(batch_size=6))) == 6


def test_a_job_of_unknown_language_sends_one_window() -> None:
    unknown, known = job(5, language=None), job(5)
    batch = pick_batch([unknown, known], DecodeSettings(batch_size=6))
    # The leader's key (language None) decides: only jobs of unknown language come along.
    assert batch == [unknown.windows[0]]
    batch = pick_batch([known, unknown], DecodeSettings(batch_size=6))
    assert owners(batch, [unknown, known]) == [1, 1, 1]


def test_a_batch_holds_one_key() -> None:
    english, french, words = job(2), job(2, language="fr"), job(2, word_timestamps=True)
    retry = job(2)
    retry.windows[0].temperature_index = 1
    jobs = [english, french, words, retry]
    batch = pick_batch(jobs, DecodeSettings(batch_size=8))
    assert batch == english.windows
    assert batch_key(retry.windows[0]) == ("en", "transcribe", False, 0.2)
    assert pick_batch([retry, english], DecodeSettings(batch_size=8)) == [retry.windows[0]]


def test_streamed_jobs_send_smaller_bites() -> None:
    streamed = job(5)
    streamed.max_per_batch = 2
    assert len(pick_batch([streamed], DecodeSettings(batch_size=6))) == 2


def test_short_windows_fill_the_batch_by_their_packed_length() -> None:
    # One job sends at most `batch_size` windows, short or not.
    assert len(pick_batch([job(20, seconds=5.0)], DecodeSettings(batch_size=2))) == 2
    # Many jobs: 5 s windows cost 7 s each, and a batch of 2 inputs (60 s) takes 9 of them
    # (the one that overflows is still taken, then the batch is full).
    shorts = [job(1, seconds=5.0) for _ in range(12)]
    assert len(pick_batch(shorts, DecodeSettings(batch_size=2))) == 9


def test_temperature_follows_the_fallback_schedule_unless_one_is_asked_for() -> None:
    plain, fixed = job(1), job(1, temperature=0.5)
    plain.windows[0].temperature_index = 2
    assert temperature(plain.windows[0]) == 0.4
    assert temperature(fixed.windows[0]) == 0.5


def test_background_jobs_lead_only_when_nothing_else_waits() -> None:
    partials = [job(1, seconds=3.0) for _ in range(3)]
    # Alone, live captions' partial re-decodes are batched like any short requests.
    assert len(pick_batch([], DecodeSettings(batch_size=6), partials)) == 3
    long = job(50)
    batch = pick_batch([long], DecodeSettings(batch_size=6), partials)
    # Together they take one share (a window each), after the file's windows.
    assert batch[:3] == long.windows[:3]
    assert batch[3:] == [p.windows[0] for p in partials]
    # No room left by the others: they wait.
    requests = [job(10) for _ in range(6)]
    batch = pick_batch(requests, DecodeSettings(batch_size=6), partials)
    assert all(window.job in requests for window in batch)


def test_background_jobs_join_only_batches_of_their_key() -> None:
    french = job(1, seconds=3.0, language="fr")
    assert pick_batch([job(2)], DecodeSettings(batch_size=6), [french])[-1].job is not french
