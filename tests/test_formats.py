"""Pure logic of the output formats and subtitle splitting (no model needed)."""

from __future__ import annotations

import io
import itertools

import pytest
import srt
import webvtt

from asrd.formats import split_segments, timestamp, to_srt, to_verbose_json, to_vtt
from asrd.languages import UnknownLanguage, language_code, language_name
from asrd.transcript import Segment, Transcript, Word


@pytest.mark.parametrize(
    "seconds,srt_form,vtt_form",
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (1.2345, "00:00:01,234", "00:00:01.234"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3725.5, "01:02:05,500", "01:02:05.500"),
        (36000, "10:00:00,000", "10:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt_form: str, vtt_form: str) -> None:
    assert timestamp(seconds, ",") == srt_form
    assert timestamp(seconds, ".") == vtt_form


def words(text: str, start: float = 0.0, step: float = 0.5) -> list[Word]:
    return [
        Word(start + i * step, start + (i + 1) * step - 0.05, " " + w)
        for i, w in enumerate(text.split())
    ]


def segment(text: str, start: float = 0.0, step: float = 0.5) -> Segment:
    ws = words(text, start, step)
    return Segment(start=ws[0].start, end=ws[-1].end, text=" " + text, words=ws, tokens=[1, 2])


def test_srt_and_vtt_parse() -> None:
    segments = [segment("Hello there.", 0), segment("General Kenobi!", 1.5)]
    cues = list(srt.parse(to_srt(segments)))
    assert [c.content for c in cues] == ["Hello there.", "General Kenobi!"]
    assert cues[1].start.total_seconds() == 1.5
    vtt = webvtt.from_buffer(io.StringIO(to_vtt(segments))).captions
    assert [c.text for c in vtt] == ["Hello there.", "General Kenobi!"]


def test_split_prefers_sentence_ends_and_keeps_every_word() -> None:
    text = "This is the first sentence. And here is a second one that runs on and on for a while."
    pieces = split_segments([segment(text)], max_seconds=None, max_chars=42)
    assert pieces[0].text.strip() == "This is the first sentence."
    assert all(len(p.text.strip()) <= 42 for p in pieces)
    assert " ".join(p.text.strip() for p in pieces) == text
    assert [p.id for p in pieces] == list(range(len(pieces)))
    for before, after in itertools.pairwise(pieces):
        assert before.end <= after.start


def test_split_by_duration_uses_word_timings() -> None:
    pieces = split_segments([segment("one two three four five six seven eight")], 1.5, None)
    assert all(p.end - p.start <= 1.5 for p in pieces)
    assert pieces[0].start == 0.0 and pieces[-1].end == pytest.approx(3.95)


def test_split_leaves_short_segments_and_segments_without_words() -> None:
    short = segment("Short one.")
    bare = Segment(0, 20, " a very long segment without word timings " * 5)
    assert split_segments([short, bare], 2, 20) == [short, bare]
    assert split_segments([short], None, None) == [short]


def test_a_single_overlong_word_is_its_own_piece() -> None:
    pieces = split_segments([segment("Supercalifragilisticexpialidocious indeed")], None, 12)
    assert [p.text.strip() for p in pieces] == ["Supercalifragilisticexpialidocious", "indeed"]


def test_verbose_json_shapes() -> None:
    transcript = Transcript([segment("Bonjour tout le monde.")], "fr", 2.2)
    body = to_verbose_json(transcript, with_segments=False, with_words=True)
    assert body["language"] == "french" and body["segments"] is None
    assert body["words"][0] == {"word": "Bonjour", "start": 0.0, "end": 0.45}
    assert body["usage"] == {"type": "duration", "seconds": 3}
    assert "words" not in to_verbose_json(transcript)
    transcript.task = "translate"
    assert to_verbose_json(transcript)["language"] == "english"


def test_languages() -> None:
    assert language_code("FR") == "fr" and language_code("french") == "fr"
    assert language_code("pt-BR") == "pt" and language_code("yue") == "yue"
    assert language_name("de") == "german"
    with pytest.raises(UnknownLanguage):
        language_code("xx")
