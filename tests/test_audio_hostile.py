"""The decoder against hostile and damaged input (no server): only audio demuxers, no
protocols, corrupt packets skipped and reported, chained streams, any channel count, CPU and
memory bounds; the memory budget; VAD in bounded memory, identical to faster-whisper's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from asrd import audio, probe
from asrd.audio import (
    ALLOWED_DEMUXERS,
    AudioError,
    AudioTooLong,
    DecodeCancelled,
    DecodeTooSlow,
    UnsupportedFormat,
    decode,
)
from asrd.budget import BudgetExceeded, MemoryBudget
from asrd.vad import speech_spans

from conftest import CLIPS, decode_pcm, long_english_audio
from hostile_audio import (
    HLS,
    SBAGEN,
    SUBTITLES,
    concat_playlist,
    encode,
    multichannel_wav,
    overwritten,
    sdp,
    silence_flac,
    with_garbage,
)

SPEECH = decode_pcm(CLIPS["en_jfk_inaugural_1961.flac"].read())  # 11 s


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (concat_playlist("secret.wav"), "concat"),
        (sdp(5004), "sdp"),
        (SBAGEN, "sbg"),
        (SUBTITLES, "srt"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "png_pipe"),
    ],
)
def test_formats_that_are_not_audio_are_refused_by_name(data: bytes, detected: str) -> None:
    with pytest.raises(UnsupportedFormat) as refused:
        decode(data)
    assert refused.value.detected == detected
    assert detected in str(refused.value)


def test_a_playlist_never_opens_the_file_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with the byte check gone, FFmpeg's own whitelists refuse: the demuxer doesn't
    run, and no protocol may open the file (a FIFO: opening it for reading would hang)."""
    fifo = tmp_path / "canary"
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(probe, "detect_format", lambda data: None)
    for data in (concat_playlist("canary"), HLS):
        with pytest.raises(AudioError):
            decode(data)
    with pytest.raises(OSError):  # ENXIO: nobody has the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_no_nested_open_even_through_an_allowed_demuxer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options given to FFmpeg: only the allowed demuxers, and no protocol at all."""
    seen: list[dict] = []
    real_open = av.open

    def spy(*args, **kwargs):
        seen.append(kwargs.get("options", {}))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(audio.av, "open", spy)
    decode(CLIPS["en_timit_LDC93S1.wav"].read())
    assert seen[0]["protocol_whitelist"] == "none"
    assert set(seen[0]["format_whitelist"].split(",")) == ALLOWED_DEMUXERS


def test_hls_and_text_are_not_audio() -> None:
    for data in (HLS, b"hello " * 100, os.urandom(4096)):
        with pytest.raises(AudioError):
            decode(data)


def test_garbage_in_an_mp3_is_skipped_not_the_rest_of_the_file() -> None:
    """400 bytes of garbage 10% in: FFmpeg skips them; so does asrd (it used to stop)."""
    speech = np.tile(SPEECH, 6)  # 66 s
    mp3 = encode(speech, "mp3", "libmp3lame")
    damaged = decode(with_garbage(mp3, 0.1, os.urandom(400)))
    assert damaged.duration == pytest.approx(66, abs=0.5)
    assert not damaged.warnings  # a frame or two at most: nothing worth reporting


def test_lost_audio_is_reported() -> None:
    speech = np.tile(SPEECH, 6)
    mp3 = encode(speech, "mp3", "libmp3lame")
    damaged = decode(overwritten(mp3, 0.5, 40_000))  # ~2.5 s of 128 kbit/s
    assert damaged.duration < 64
    assert damaged.warnings and "could be decoded" in damaged.warnings[0]
    cut = decode(mp3[: len(mp3) // 2])
    assert cut.warnings and "cut short" in cut.warnings[0]


@pytest.mark.parametrize(("fmt", "codec"), [("ogg", "flac"), ("mp3", "libmp3lame")])
def test_chained_streams_whose_sample_rate_changes_are_followed(fmt: str, codec: str) -> None:
    first = encode(SPEECH, fmt, codec, rate=44_100)
    second = encode(SPEECH[: 5 * 16_000], fmt, codec, rate=22_050)
    decoded = decode(first + second)
    assert decoded.duration == pytest.approx(16, abs=0.3)


@pytest.mark.parametrize(("channels", "rate"), [(6, 48_000), (9, 192_000), (64, 192_000)])
def test_any_channel_count(channels: int, rate: int) -> None:
    decoded = decode(multichannel_wav(SPEECH[: 2 * 16_000], channels, rate))
    assert decoded.duration == pytest.approx(2, abs=0.01)
    assert np.abs(decoded.samples).max() > 100  # the speech on the last channel is kept


def test_decoding_cpu_time_is_bounded() -> None:
    bomb = silence_flac(600, rate=96_000, channels=8)
    with pytest.raises(DecodeTooSlow):
        decode(bomb, max_cpu_s=0.2)


def test_decoding_stops_when_cancelled() -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(DecodeCancelled):
        decode(silence_flac(120), cancelled=cancelled)


def test_over_long_audio_stops_at_the_limit() -> None:
    with pytest.raises(AudioTooLong):
        decode(silence_flac(120), max_duration_s=60)


def test_a_bomb_decodes_in_its_own_size_of_memory() -> None:
    """One hour of silence from ~700 KB: the int16 samples (115 MB) and not much more (the
    buffer grows in place; VAD converts a block at a time). Measured in a fresh process."""
    script = (
        "import resource, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from hostile_audio import silence_flac\n"
        "from asrd.audio import decode\n"
        "from asrd.vad import speech_spans\n"
        "from faster_whisper.vad import VadOptions\n"
        "bomb = silence_flac(3600)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = decode(bomb)\n"
        "assert speech_spans(decoded.samples, VadOptions()) == []\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) / 1024)\n"
    )
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True
    )
    growth_mb = float(result.stdout.strip())
    assert growth_mb < 115 + 60, f"peak RSS grew {growth_mb:.0f} MB for 115 MB of samples"


def test_budget_reservations() -> None:
    budget = MemoryBudget(1000, wait_s=0.1)
    first = budget.reservation()
    first.grow(600)
    second = budget.reservation()
    with pytest.raises(BudgetExceeded) as busy:
        second.grow(600)
    assert busy.value.fits_ever
    with pytest.raises(BudgetExceeded) as never:
        second.grow(1001)
    assert not never.value.fits_ever
    samples = np.zeros(100, dtype=np.int16)  # 200 bytes
    first.hold_until_freed(samples)
    assert budget.used == 200
    second.grow(600)
    del samples
    assert budget.used == 600
    second.release()
    assert budget.used == 0


def test_budget_waits_for_room() -> None:
    budget = MemoryBudget(1000, wait_s=5)
    holder = budget.reservation()
    holder.grow(1000)
    threading.Timer(0.2, holder.release).start()
    waiter = budget.reservation()
    waiter.grow(500)  # room comes within the wait
    assert budget.used == 500


def test_vad_matches_faster_whisper() -> None:
    long, _ = long_english_audio(repeats=2)
    options = VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)
    for samples in (SPEECH, long, long[: 512 * 700]):
        expected = [(s["start"], s["end"]) for s in get_speech_timestamps(samples, options)]
        int16 = (samples * 32768).clip(-32768, 32767).astype(np.int16)
        assert speech_spans(int16, options) == [
            (s["start"], s["end"])
            for s in get_speech_timestamps(int16.astype(np.float32) / 32768, options)
        ]
        assert speech_spans(samples, options) == expected


def test_budget_room_kept_free_for_others() -> None:
    budget = MemoryBudget(1000, wait_s=0)
    long = budget.reservation()
    long.grow(800, keep_free=125)
    with pytest.raises(BudgetExceeded):
        long.grow(100, keep_free=125)  # would leave less than 125 to the others
    with pytest.raises(BudgetExceeded) as never:
        budget.reservation().grow(900, keep_free=125)
    assert not never.value.fits_ever
    budget.reservation().grow(150)  # the room kept free is theirs
