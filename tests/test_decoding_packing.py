"""Packing short windows of different requests into shared 30 s model inputs."""

from __future__ import annotations

import pytest

from asrd.decoding import DecodeSettings
from asrd.decoding.packing import PACK_GAP_S, cost, layout, pack_batch, packable
from asrd.decoding.windows import NO_AUDIO, Job, Window
from asrd.transcript import TranscribeOptions

SETTINGS = DecodeSettings()


def window(seconds: float, language: str | None = "en", **options: object) -> Window:
    job = Job(samples=NO_AUDIO, options=TranscribeOptions(**options), windows=[])  # type: ignore[arg-type]
    job.language = language
    return Window(job, 0.0, seconds, speech=[(0.0, seconds)])


def test_short_windows_are_packed_up_to_30_s_with_gaps() -> None:
    windows = [window(s) for s in (5.0, 8.0, 10.0, 6.0, 3.0)]
    packs = pack_batch(windows, SETTINGS)
    # Longest first: 10 + 2 + 8 + 2 + 6 = 28, then 5 + 2 + 3; parts in the batch's order.
    assert packs == [[windows[0], windows[4]], windows[1:4]]
    assert layout(packs[0]) == (0.0, 10.0, [0.0, 7.0])
    assert layout(packs[1]) == (0.0, 28.0, [0.0, 10.0, 22.0])
    for pack in packs:
        assert layout(pack)[1] <= 30.0


def test_packs_fill_inputs_first_fit_longest_first() -> None:
    # In arrival order these take 4 inputs (8.3 + 4 + 11 | 7.1 + 3 + 6.6 | 5.9 | 8.7 ...).
    windows = [window(s) for s in (8.3, 4.0, 11.0, 7.1, 3.0, 6.6, 5.9, 8.7)]
    packs = pack_batch(windows, SETTINGS)
    assert len(packs) == 3
    assert sorted(id(w) for pack in packs for w in pack) == sorted(id(w) for w in windows)
    assert all(layout(pack)[1] <= 30.0 for pack in packs)


def test_a_pack_costs_what_it_holds_a_window_alone_a_whole_input() -> None:
    assert cost(window(5.0), SETTINGS) == 5.0 + PACK_GAP_S
    assert cost(window(20.0), SETTINGS) == 30.0


def test_a_window_alone_keeps_its_own_time_range() -> None:
    alone = window(20.0)
    alone.start, alone.end = 40.0, 60.0
    assert layout([alone]) == (40.0, 60.0, [40.0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: window(16.0),  # too long a part
        lambda: window(5.0, language=None),  # language unknown yet: its own encoder pass
        lambda: window(5.0, word_timestamps=True),
        lambda: window(5.0, prompt="Kennedy"),
    ],
)
def test_windows_that_need_an_input_of_their_own_are_never_packed(make) -> None:
    lone = make()
    assert not packable(lone, SETTINGS)
    shorts = [window(3.0), window(3.0)]
    assert pack_batch([shorts[0], lone, shorts[1]], SETTINGS) == [[lone], shorts]


def test_retries_second_passes_and_solo_parts_are_never_packed() -> None:
    retry, child, solo = window(5.0), window(5.0), window(5.0)
    retry.temperature_index = 1
    child.parent = window(30.0)
    solo.solo = True
    for lone in (retry, child, solo):
        assert not packable(lone, SETTINGS)


def test_packing_can_be_turned_off() -> None:
    windows = [window(3.0), window(3.0)]
    assert pack_batch(windows, DecodeSettings(pack_windows=False)) == [[w] for w in windows]
