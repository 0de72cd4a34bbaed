"""The decoder on its own: formats, rates, corrupt input, limits."""

from __future__ import annotations

import numpy as np
import pytest

from asrd.audio import SAMPLE_RATE, AudioError, AudioTooLong, decode_audio

from conftest import CLIPS, encode


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_every_test_clip_decodes_to_16k_mono(name: str) -> None:
    clip = CLIPS[name]
    samples = decode_audio(clip.read())
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / SAMPLE_RATE == pytest.approx(clip.duration, abs=0.1)
    assert 0.01 < np.abs(samples).max() <= 1.0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_duration_and_pitch(rate: int) -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    samples = decode_audio(encode(tone, "wav", rate=rate))
    assert len(samples) == pytest.approx(2 * SAMPLE_RATE, abs=SAMPLE_RATE * 0.01)
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(samples) == pytest.approx(440, abs=3)


@pytest.mark.parametrize(
    "data", [b"", b"\0" * 1000, b"ID3" + b"\xff" * 100, b"fLaC" + bytes(range(256)) * 4]
)
def test_garbage_raises_audio_error(data: bytes) -> None:
    with pytest.raises(AudioError):
        decode_audio(data)


def test_truncated_file_keeps_what_decodes() -> None:
    data = CLIPS["en_jfk_inaugural_1961_16k.mp3"].read()
    samples = decode_audio(data[: len(data) // 2])
    assert 4 < len(samples) / SAMPLE_RATE < 7


def test_duration_limit() -> None:
    data = encode(np.zeros(30 * SAMPLE_RATE, np.float32), "flac")
    assert len(decode_audio(data, max_duration_s=31)) == 30 * SAMPLE_RATE
    with pytest.raises(AudioTooLong):
        decode_audio(data, max_duration_s=29)
