"""Checking decoded windows and packs: the verdicts, and what applying them does."""

from __future__ import annotations

from asrd.decoding import DecodedSegment, DecodeSettings, Job
from asrd.decoding.checks import (
    Final,
    Retry,
    SecondPass,
    Silence,
    Solo,
    check_pack,
    check_window,
)
from asrd.decoding.queues import apply
from asrd.decoding.results import Decoded, WindowOutput
from asrd.decoding.windows import NO_AUDIO, Window
from asrd.transcript import TranscribeOptions

SETTINGS = DecodeSettings()


def window(start: float = 0.0, end: float = 10.0, **options: object) -> Window:
    job = Job(samples=NO_AUDIO, options=TranscribeOptions(**options), windows=[])  # type: ignore[arg-type]
    job.language = "en"
    return Window(job, start, end, speech=[(start, end)])


def segment(start: float, end: float, text: str = " text") -> DecodedSegment:
    return DecodedSegment(start, end, text, 0, [], 0.0, -0.2, 1.2, 0.01)


def decoded(
    *segments: DecodedSegment,
    avg_logprob: float = -0.2,
    no_speech_prob: float = 0.01,
    compression_ratio: float = 1.2,
) -> Decoded:
    return Decoded(WindowOutput([], avg_logprob, no_speech_prob, compression_ratio), list(segments))


GOOD = decoded(segment(0.0, 10.0))
REPETITIVE = decoded(segment(0.0, 10.0, " again"), compression_ratio=3.0, avg_logprob=-0.1)
UNLIKELY = decoded(segment(0.0, 10.0, " guess"), avg_logprob=-1.5)


def test_a_good_decoding_is_final() -> None:
    target = window()
    assert check_window(target, GOOD, SETTINGS) == Final(GOOD.segments)
    apply(target, Final(GOOD.segments))
    assert target.final == GOOD.segments and target.complete and not target.job.pending


def test_silence_gives_no_text() -> None:
    target = window()
    verdict = check_window(target, decoded(avg_logprob=-1.2, no_speech_prob=0.9), SETTINGS)
    assert verdict == Silence()
    apply(target, verdict)
    assert target.final == [] and target.complete


def test_a_failed_check_is_retried_at_the_next_temperature() -> None:
    target = window()
    verdict = check_window(target, REPETITIVE, SETTINGS)
    assert verdict == Retry(REPETITIVE)
    apply(target, verdict)
    assert target.temperature_index == 1 and list(target.job.pending) == [target]
    assert target.candidates == [REPETITIVE] and not target.complete
    assert check_window(target, UNLIKELY, SETTINGS) == Retry(UNLIKELY)


def test_when_every_temperature_failed_the_best_candidate_is_kept() -> None:
    target = window()
    target.temperature_index = 5  # the last fallback temperature
    target.candidates = [REPETITIVE, UNLIKELY]
    last = decoded(segment(0.0, 10.0, " last"), avg_logprob=-1.3)
    # The repetitive one is the most likely, but not passable: the likeliest passable wins.
    assert check_window(target, last, SETTINGS) == Final(last.segments)
    target.candidates = [REPETITIVE]
    worse = decoded(segment(0.0, 10.0, " worse"), compression_ratio=2.6, avg_logprob=-0.5)
    assert check_window(target, worse, SETTINGS) == Final(REPETITIVE.segments)


def test_a_fixed_temperature_is_never_retried() -> None:
    target = window(temperature=0.5)
    assert check_window(target, REPETITIVE, SETTINGS) == Final(REPETITIVE.segments)


def test_uncovered_speech_gets_a_second_pass() -> None:
    target = window(0.0, 30.0)
    early_end = decoded(segment(0.0, 20.0))  # the decoder stopped at 20 s
    verdict = check_window(target, early_end, SETTINGS)
    assert isinstance(verdict, SecondPass) and verdict.segments == early_end.segments
    [child] = verdict.children
    assert (child.start, child.end, child.parent) == (20.05, 30.0, target)
    apply(target, verdict)
    assert target.children == [child] and list(target.job.pending) == [child]
    assert not target.complete
    # A second pass gets no second pass of its own.
    assert check_window(child, decoded(), SETTINGS) == Final([])


def test_covered_speech_gets_no_second_pass() -> None:
    assert check_window(window(0.0, 30.0), decoded(segment(0.0, 29.9)), SETTINGS) == Final(
        [segment(0.0, 29.9)]
    )


def test_a_segment_across_two_parts_of_a_pack_sends_both_back_alone() -> None:
    first, second = window(0.0, 5.0), window(10.0, 15.0)  # parts at 0 s and 7 s of the pack
    verdicts = check_pack([first, second], decoded(segment(0.0, 12.0)), SETTINGS)
    assert verdicts == [Solo(), Solo()]
    for part, verdict in zip([first, second], verdicts, strict=True):
        apply(part, verdict)
        assert part.solo and list(part.job.pending) == [part] and part.final is None


def test_a_pack_hands_each_part_its_segments_in_its_own_time() -> None:
    first, second = window(0.0, 5.0), window(10.0, 15.0)
    verdicts = check_pack([first, second], decoded(segment(0.0, 5.0), segment(7.0, 12.0)), SETTINGS)
    assert [type(v) for v in verdicts] == [Final, Final]
    [[one], [two]] = [v.segments for v in verdicts]  # type: ignore[union-attr]
    assert (one.start, one.end, two.start, two.end, two.seek) == (0.0, 5.0, 10.0, 15.0, 1000)


def test_a_failed_pack_or_a_repetitive_part_is_decoded_again_alone() -> None:
    parts = [window(0.0, 5.0), window(0.0, 5.0)]
    both = decoded(segment(0.0, 5.0), segment(7.0, 12.0), avg_logprob=-1.5)
    assert check_pack(parts, both, SETTINGS) == [Solo(), Solo()]
    looping = decoded(segment(0.0, 5.0, " the" * 40), segment(7.0, 12.0))
    verdicts = check_pack(parts, looping, SETTINGS)
    assert verdicts[0] == Solo() and isinstance(verdicts[1], Final)
