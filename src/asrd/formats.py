"""Output formats: OpenAI's json / text / srt / vtt / verbose_json, and subtitle-sized segments."""

from __future__ import annotations

import math
from dataclasses import replace

from .languages import language_name
from .transcript import Segment, Transcript, Word

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"  # what OpenAI sends for text, srt and vtt

_SENTENCE_END = (".", "?", "!", "。", "\uff1f", "\uff01")  # incl. fullwidth ? and !
_CLAUSE_END = (",", ";", ":", "\uff0c", "、")  # incl. fullwidth comma


def timestamp(seconds: float, decimal_marker: str) -> str:
    """`3725.5` -> `01:02:05,500` (srt) or `01:02:05.500` (vtt)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_srt(segments: list[Segment]) -> str:
    blocks = [
        f"{index}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for index, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    blocks = [
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def segment_json(segment: Segment) -> dict:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": segment.tokens,
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def words_json(segments: list[Segment]) -> list[dict]:
    return [
        {"word": word.word.strip(), "start": word.start, "end": word.end}
        for segment in segments
        for word in segment.words or ()
    ]


def usage(transcript: Transcript) -> dict:
    # OpenAI bills whole seconds and reports them so.
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def to_verbose_json(
    transcript: Transcript, *, with_segments: bool = True, with_words: bool = False
) -> dict:
    """OpenAI's `verbose_json`: `segments` is null when only words were asked for."""
    body: dict = {
        "task": transcript.task,
        # OpenAI reports the output's language: always English for a translation.
        "language": "english"
        if transcript.task == "translate"
        else language_name(transcript.language),
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [segment_json(s) for s in transcript.segments] if with_segments else None,
    }
    if with_words:
        body["words"] = words_json(transcript.segments)
    body["usage"] = usage(transcript)
    return body


def render(
    transcript: Transcript, fmt: str, *, with_segments: bool = True, with_words: bool = False
) -> str | dict:
    """`transcript` in one of OpenAI's response formats: `json` and `verbose_json` as a JSON
    body (dict), `text`, `srt` and `vtt` as text. The OpenAI routes, task downloads and the
    CLI all render through here."""
    if fmt == "json":
        return {"text": transcript.text, "usage": usage(transcript)}
    if fmt == "verbose_json":
        return to_verbose_json(transcript, with_segments=with_segments, with_words=with_words)
    if fmt == "srt":
        return to_srt(transcript.segments)
    if fmt == "vtt":
        return to_vtt(transcript.segments)
    if fmt == "text":
        return to_text(transcript)
    raise ValueError(f"unknown format {fmt!r}")


def split_segments(
    segments: list[Segment], max_seconds: float | None, max_chars: int | None
) -> list[Segment]:
    """Split segments longer than `max_seconds` or `max_chars` at word boundaries.

    Uses the words' timings, so each piece gets its true start and end. A piece ends at the
    last sentence end (else clause end) that fits, and only at an arbitrary word when neither
    does. Segments without word timings are left as they are.
    """
    if not max_seconds and not max_chars:
        return segments
    result: list[Segment] = []
    for segment in segments:
        if not segment.words or _fits(segment.words, max_seconds, max_chars):
            result.append(segment)
            continue
        words = segment.words
        while words:
            cut = _cut_point(words, max_seconds, max_chars)
            piece, words = words[:cut], words[cut:]
            result.append(
                replace(
                    segment,
                    start=piece[0].start,
                    end=piece[-1].end,
                    text=" " + "".join(w.word for w in piece).strip(),
                    tokens=[],
                    words=piece,
                )
            )
    for index, segment in enumerate(result):
        segment.id = index
    return result


def _fits(words: list[Word], max_seconds: float | None, max_chars: int | None) -> bool:
    if max_seconds and words[-1].end - words[0].start > max_seconds:
        return False
    return not (max_chars and len("".join(w.word for w in words).strip()) > max_chars)


def _cut_point(words: list[Word], max_seconds: float | None, max_chars: int | None) -> int:
    """How many of `words` go into the next piece (at least one)."""
    fitting = 1
    while fitting < len(words) and _fits(words[: fitting + 1], max_seconds, max_chars):
        fitting += 1
    if fitting == len(words):
        return fitting
    for ends in (_SENTENCE_END, _CLAUSE_END):
        for count in range(fitting, max(1, fitting // 2), -1):  # not shorter than half
            if words[count - 1].word.strip().endswith(ends):
                return count
    return fitting
