"""Decoded windows checked like Whisper's sequential pipeline checks them. Each check returns
a verdict; the scheduler applies it (these functions change nothing).

- silence (high no-speech probability and low log-probability) gives no text;
- a failed decoding (compression ratio over 2.4, or mean log-probability under -1) is decoded
  again at the next fallback temperature, batched with the other failures; once every
  temperature failed, the best decoding is kept, as Whisper does;
- coverage: speech that VAD found inside the window but no decoded segment covers (Whisper
  ending a window early, or skipping an utterance: the batched pipeline's lost words) is cut
  out and decoded again in new windows (a second pass);
- a pack's part that the pack didn't serve cleanly is decoded again alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .packing import Pack, layout
from .results import Decoded, DecodedSegment, WindowOutput, compression_ratio
from .settings import FALLBACK_TEMPERATURES, WINDOW_S, DecodeSettings
from .windows import Window, pack_spans, uncovered

MIN_UNCOVERED_TOTAL_S = 0.8  # a window needs this much uncovered speech for a second pass
PAD_S = 0.25  # around the uncovered speech decoded again
# A segment reaching this far into a second part of a pack runs across two parts. (Whisper
# tends to end a segment where the next speech starts, and each part begins with VAD's 0.4 s
# of padding: 0.2 s sent a third of packs' parts to be decoded again for nothing.)
PART_OVERLAP_S = 0.5
FRAMES_PER_S = 100  # mel frames per second (a segment's `seek`)


@dataclass(frozen=True)
class Final:
    """The window is decoded: these are its segments."""

    segments: list[DecodedSegment]


@dataclass(frozen=True)
class Silence:
    """The window holds no speech: no text."""


@dataclass(frozen=True)
class Retry:
    """The decoding failed: keep it as a candidate, decode again at the next temperature."""

    candidate: Decoded


@dataclass(frozen=True)
class SecondPass:
    """Decoded, but speech was left out: `children` (windows on it) are decoded too."""

    segments: list[DecodedSegment]
    children: list[Window]


@dataclass(frozen=True)
class Solo:
    """A pack's part the pack didn't serve: decode it again, alone."""


Verdict = Final | Silence | Retry | SecondPass | Solo


def silent(output: WindowOutput, settings: DecodeSettings) -> bool:
    return (
        output.no_speech_prob > settings.no_speech_threshold
        and output.avg_logprob < settings.log_prob_threshold
    )


def failed(output: WindowOutput, settings: DecodeSettings) -> bool:
    return (
        output.compression_ratio > settings.compression_ratio_threshold
        or output.avg_logprob < settings.log_prob_threshold
    )


def check_window(window: Window, decoded: Decoded, settings: DecodeSettings) -> Verdict:
    """The verdict on a window decoded alone."""
    if silent(decoded.output, settings):
        return Silence()
    can_retry = window.job.options.temperature == 0 and window.temperature_index + 1 < len(
        FALLBACK_TEMPERATURES
    )
    if failed(decoded.output, settings):
        if can_retry:
            return Retry(decoded)
        decoded = best([*window.candidates, decoded], settings)
    if window.parent is None:  # second passes get no second pass of their own
        children = second_pass(window, decoded.segments)
        if children:
            return SecondPass(decoded.segments, children)
    return Final(decoded.segments)


def best(candidates: list[Decoded], settings: DecodeSettings) -> Decoded:
    """Every temperature failed: the most likely decoding that isn't repetitive, if any."""
    passable = [
        c for c in candidates if c.output.compression_ratio <= settings.compression_ratio_threshold
    ] or candidates
    return max(passable, key=lambda c: c.output.avg_logprob)


def second_pass(window: Window, segments: list[DecodedSegment]) -> list[Window]:
    """New windows on the speech this window's result left out (none if little was)."""
    pieces = uncovered(window, segments)
    if sum(e - s for s, e in pieces) < MIN_UNCOVERED_TOTAL_S:
        return []
    padded = [(max(window.start, s - PAD_S), min(window.end, e + PAD_S)) for s, e in pieces]
    return [
        Window(window.job, start, end, speech, parent=window)
        for start, end, speech in pack_spans(padded, WINDOW_S, window.end)
    ]


def check_pack(pack: Pack, decoded: Decoded, settings: DecodeSettings) -> list[Final | Solo]:
    """Hand a pack's segments back to its parts, one verdict per part: a part the pack didn't
    serve cleanly (a failed check, a segment running across two parts, speech left without
    text) is decoded again alone."""
    # The log-probability is the whole pack's; repetitiveness is judged part by part below
    # (requests with the same words would look repetitive together).
    all_failed = decoded.output.avg_logprob < settings.log_prob_threshold
    _, _, offsets = layout(pack)
    spans = [(o, o + w.end - w.start) for o, w in zip(offsets, pack, strict=True)]
    owned: list[list[DecodedSegment]] = [[] for _ in pack]
    redo = set(range(len(pack))) if all_failed else set()
    for segment in [] if all_failed else decoded.segments:
        overlaps = [min(segment.end, e) - max(segment.start, s) for s, e in spans]
        across = [i for i, o in enumerate(overlaps) if o > PART_OVERLAP_S]
        if len(across) > 1:
            redo.update(across)
        elif max(overlaps) > 0:  # in no part at all: the silence between two
            owned[overlaps.index(max(overlaps))].append(segment)
    for index, segments_of_part in enumerate(owned):
        text = "".join(segment.text for segment in segments_of_part).strip()
        if text and compression_ratio(text) > settings.compression_ratio_threshold:
            redo.add(index)
    verdicts: list[Final | Solo] = []
    for index, window in enumerate(pack):
        if index in redo:
            verdicts.append(Solo())
            continue
        shift = window.start - offsets[index]
        mapped = [
            dataclasses.replace(
                s,
                start=min(max(s.start + shift, window.start), window.end),
                end=min(max(s.end + shift, window.start), window.end),
                seek=round(window.start * FRAMES_PER_S),
            )
            for s in owned[index]
        ]
        if sum(e - s for s, e in uncovered(window, mapped)) >= MIN_UNCOVERED_TOTAL_S:
            # Speech the pack's text left out: decode the part alone. (A second pass on the
            # gap, as for solo windows, repeats words when the pack's timings are off.)
            verdicts.append(Solo())
        else:
            verdicts.append(Final(mapped))
    return verdicts
