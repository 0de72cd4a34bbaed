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
    """Group the batch's windows into model inputs: packs of short windows, or one."""
    packs: list[Pack] = []
    open_pack: Pack = []
    length = 0.0
    for window in batch:
        if not packable(window, settings):
            packs.append([window])
            continue
        duration = window.end - window.start
        if open_pack and length + PACK_GAP_S + duration > WINDOW_S:
            packs.append(open_pack)
            open_pack, length = [], 0.0
        length += (PACK_GAP_S if open_pack else 0.0) + duration
        open_pack.append(window)
    if open_pack:
        packs.append(open_pack)
    return packs


def layout(pack: Pack) -> tuple[float, float, list[float]]:
    """A model input's time range and, for a pack, where each part starts inside it."""
    if len(pack) == 1:
        return pack[0].start, pack[0].end, [pack[0].start]
    offsets, length = [], 0.0
    for window in pack:
        offsets.append(length)
        length += window.end - window.start + PACK_GAP_S
    return 0.0, length - PACK_GAP_S, offsets
