"""Packing: short windows of different requests share one 30 s model input (the encoder costs
the same for 3 s as for 30 s); each part keeps its own time range, 2 s of silence apart."""

from __future__ import annotations

from .settings import WINDOW_S, DecodeSettings
from .windows import Window

PACK_GAP_S = 2.0
PACK_MAX_PART_S = 15.0

Pack = list[Window]  # one model input: a window alone, or short windows packed together


def packable(window: Window, settings: DecodeSettings) -> bool:
    """Only plain first decodings of short windows are packed: a retry, a second pass, word
    timings or a prompt need the window to themselves."""
    options = window.job.options
    return (
        settings.pack_windows
        and window.job.language is not None
        and not window.solo
        and window.parent is None
        and window.temperature_index == 0
        and not options.word_timestamps
        and not options.prompt
        and window.end - window.start <= PACK_MAX_PART_S
    )


def cost(window: Window, settings: DecodeSettings) -> float:
    """Seconds of a 30 s model input the window takes."""
    if packable(window, settings):
        return window.end - window.start + PACK_GAP_S
    return WINDOW_S


def pack_batch(batch: list[Window], settings: DecodeSettings) -> list[Pack]:
    """Group the batch's windows into model inputs: packs of short windows, or one.

    First fit, longest first: each encoder pass is the cost to save, and packing in arrival
    order leaves inputs a third empty (8 real clips: 4 inputs where 3 hold them). A pack's
    parts keep the batch's order."""
    alone = [[window] for window in batch if not packable(window, settings)]
    order = {id(window): index for index, window in enumerate(batch)}
    packs: list[Pack] = []
    lengths: list[float] = []
    shorts = [window for window in batch if packable(window, settings)]
    for window in sorted(shorts, key=lambda w: w.end - w.start, reverse=True):
        duration = window.end - window.start
        for index, length in enumerate(lengths):
            if length + PACK_GAP_S + duration <= WINDOW_S:
                packs[index].append(window)
                lengths[index] += PACK_GAP_S + duration
                break
        else:
            packs.append([window])
            lengths.append(duration)
    for pack in packs:
        pack.sort(key=lambda window: order[id(window)])
    packs.sort(key=lambda pack: order[id(pack[0])])
    return alone + packs


def fits(pack: Pack, window: Window) -> bool:
    """Whether `window` can be added to `pack` within one 30 s input."""
    length = sum(part.end - part.start + PACK_GAP_S for part in pack)
    return length + window.end - window.start <= WINDOW_S


def layout(pack: Pack) -> tuple[float, float, list[float]]:
    """A model input's time range and, for a pack, where each part starts inside it."""
    if len(pack) == 1:
        return pack[0].start, pack[0].end, [pack[0].start]
    offsets, length = [], 0.0
    for window in pack:
        offsets.append(length)
        length += window.end - window.start + PACK_GAP_S
    return 0.0, length - PACK_GAP_S, offsets
