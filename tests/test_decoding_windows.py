"""Cutting audio into windows, and finding the speech decoded segments leave uncovered."""

from __future__ import annotations

import numpy as np

from asrd.decoding import DecodedSegment, DecodeSettings, new_job
from asrd.decoding.windows import NO_AUDIO, Job, Window, pack_spans, speech_windows, uncovered
from asrd.transcript import TranscribeOptions


def segment(start: float, end: float) -> DecodedSegment:
    return DecodedSegment(start, end, " text", 0, [], 0.0, -0.2, 1.2, 0.01)


def job() -> Job:
    return Job(samples=NO_AUDIO, options=TranscribeOptions(), windows=[])


def test_speech_closer_than_the_gap_shares_a_window_up_to_the_limit() -> None:
    spans = [(0.0, 10.0), (10.5, 20.0), (20.5, 29.0), (29.5, 35.0), (40.0, 45.0)]
    windows = pack_spans(spans, 30.0, 60.0)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 29.0), (29.5, 35.0), (40.0, 45.0)]
    assert windows[0][2] == spans[:3]


def test_a_long_pause_starts_a_new_window() -> None:
    windows = pack_spans([(0.0, 2.0), (4.5, 6.0)], 30.0, 10.0)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 2.0), (4.5, 6.0)]


def test_overlong_speech_is_cut_at_the_limit_and_windows_end_with_the_audio() -> None:
    windows = pack_spans([(0.0, 70.0)], 30.0, 69.5)
    assert [(s, e) for s, e, _ in windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 69.5)]


def test_without_vad_the_audio_is_cut_in_fixed_windows() -> None:
    samples = np.zeros(16_000 * 65, np.int16)
    settings = DecodeSettings(vad_filter=False)
    assert [(s, e) for s, e, _ in speech_windows(samples, settings)] == [
        (0.0, 30.0),
        (30.0, 60.0),
        (60.0, 65.0),
    ]
    made = new_job(samples, TranscribeOptions(language="en"), settings)
    assert [(w.start, w.end) for w in made.windows] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert all(w.job is made for w in made.windows) and not made.pending
    assert made.options.language == "en"


def test_uncovered_speech_is_found() -> None:
    window = Window(job(), 0.0, 30.0, speech=[(0.0, 12.0), (13.0, 29.0)])
    # The decoder stopped at 20 s (an early end): 20.3 .. 29 s is speech nobody decoded.
    assert uncovered(window, [segment(0.0, 11.8), segment(13.1, 20.0)]) == [(20.3, 29.0)]
    # Small gaps inside the slack don't count, nor pieces under half a second.
    assert uncovered(window, [segment(0.2, 11.9), segment(13.0, 28.8)]) == []
    assert uncovered(window, [segment(0.0, 11.8), segment(13.5, 29.0)]) == []
    assert uncovered(window, []) == [(0.0, 12.0), (13.0, 29.0)]


def test_a_window_is_complete_with_its_second_passes_and_gives_their_segments_in_order() -> None:
    window = Window(job(), 0.0, 30.0, speech=[(0.0, 30.0)])
    child = Window(window.job, 10.0, 20.0, speech=[(10.0, 20.0)], parent=window)
    window.children.append(child)
    window.final = [segment(0.0, 9.0), segment(21.0, 30.0)]
    assert not window.complete
    child.final = [segment(10.0, 20.0)]
    assert window.complete
    assert [s.start for s in window.segments()] == [0.0, 10.0, 21.0]


def test_releasing_a_job_lets_go_of_its_audio() -> None:
    made = Job(samples=np.ones(100, np.int16), options=TranscribeOptions(), windows=[])
    made.release_audio()
    assert made.samples is NO_AUDIO
