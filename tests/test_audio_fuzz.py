"""Fuzzing the audio decoder: random bytes, truncated files and damaged files of every format
asrd is tested with. Each must decode to sane samples or raise `AudioError` (a clean 400 at
the API), fast: never another exception, a crash or a hang; and no input ever reaches a
demuxer that is not on the audio allow-list.

Derandomized, so CI runs the same examples every time; `ASRD_FUZZ_EXAMPLES` runs more."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asrd import audio
from asrd.audio import AudioError, AudioTooLong, decode_audio, probe_audio

from conftest import CLIPS

SEEDS = {
    name: CLIPS[name].read()
    for name in (
        "en_timit_LDC93S1.wav",  # PCM WAV
        "en_ms_whats_the_weather_like_alaw.wav",  # A-law WAV
        "en_jfk_inaugural_1961.flac",
        "en_jfk_inaugural_1961_16k.mp3",
        "en_ls_1089-134686-0001_transcoded.ogg",  # Vorbis
        "en_ls_1089-134686-0001_transcoded.opus",
        "en_ls_1089-134686-0001_transcoded.webm",
        "en_ls_1089-134686-0001_transcoded.m4a",  # AAC in MP4
    )
}
EXAMPLES = int(os.environ.get("ASRD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,  # timed by hand below: a slow example fails with its own duration
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
MAX_SECONDS_PER_INPUT = 5.0
OPENED: list[str] = []  # the demuxer of every container the decoder opened


@pytest.fixture(autouse=True, scope="module")
def record_demuxers() -> Iterator[None]:
    real_open = audio.av.open

    def recording_open(*args, **kwargs):
        container = real_open(*args, **kwargs)
        OPENED.append(container.format.name)
        return container

    audio.av.open = recording_open
    yield
    audio.av.open = real_open


def check_decodes_cleanly(data: bytes) -> None:
    started = time.monotonic()
    OPENED.clear()
    try:
        samples = decode_audio(data, max_duration_s=60, as_int16=True)
    except (AudioError, AudioTooLong):
        pass
    else:
        assert samples.dtype == np.int16 and samples.ndim == 1 and samples.size > 0
    with contextlib.suppress(AudioError):
        probe_audio(data)
    elapsed = time.monotonic() - started
    assert elapsed < MAX_SECONDS_PER_INPUT, f"{len(data)} bytes took {elapsed:.1f} s"
    for demuxer in OPENED:
        assert set(demuxer.split(",")) & audio.ALLOWED_DEMUXERS, f"{demuxer} ran"


@FUZZ
@given(st.binary(max_size=8192))
def test_random_bytes(data: bytes) -> None:
    check_decodes_cleanly(data)


@FUZZ
@given(
    st.sampled_from(
        [
            b"ffconcat version 1.0\n",
            b"v=0\r\n",
            b"#EXTM3U\n",
            b"-SE\n",
            b"1\n00:00:01,000 --> ",
            b"WEBVTT\n",
            b"<?xml ",
            b"\x89PNG\r\n\x1a\n",
            b"GIF89a",
            b"[Script Info]\n",
        ]
    ),
    st.binary(max_size=2048),
)
def test_text_formats_with_random_tails(head: bytes, tail: bytes) -> None:
    """Starts of playlists, SDP, HLS, SBaGen, subtitles and images: never demuxed."""
    check_decodes_cleanly(head + tail)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.floats(0, 1, exclude_max=True))
def test_truncated_files(name: str, fraction: float) -> None:
    data = SEEDS[name]
    check_decodes_cleanly(data[: int(len(data) * fraction)])


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=64),
    st.floats(0, 0.2),
)
def test_damaged_files(name: str, flips: list[tuple[float, int]], head_share: float) -> None:
    """Bytes overwritten anywhere, with extra weight on the header (where parsers trip)."""
    data = bytearray(SEEDS[name])
    for position, value in flips:
        limit = len(data) if position > head_share else min(len(data), 512)
        data[int(position * limit) % len(data)] = value
    check_decodes_cleanly(bytes(data))


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.binary(min_size=1, max_size=4096))
def test_valid_header_with_garbage_body(name: str, garbage: bytes) -> None:
    check_decodes_cleanly(SEEDS[name][:256] + garbage)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_decode(name: str) -> None:
    """The undamaged seeds decode, so the fuzzing above starts from real files."""
    assert decode_audio(SEEDS[name]).size > 16_000
