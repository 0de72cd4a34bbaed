"""The client's audio, as it arrives in `input_audio_buffer.append` events, turned into the
16 kHz mono 16-bit samples the engine takes: 24 kHz PCM resampled by libswresample (PyAV),
G.711 mu-law and A-law expanded by table lookup, then resampled from 8 kHz."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import av
import numpy as np

from ..audio import SAMPLE_RATE

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
FORMAT_RATES: dict[str, int] = {"audio/pcm": 24_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}


def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (codes >> 4) & 0x07, codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (codes >> 4) & 0x07, codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


G711 = {"audio/pcmu": _mulaw_table(), "audio/pcma": _alaw_table()}


class InputConverter:
    """One session's audio stream in `fmt`, converted chunk by chunk (the resampler keeps its
    state across chunks, so chunk edges leave no clicks; a 24 kHz chunk of an odd number of
    bytes keeps its last byte for the next one)."""

    def __init__(self, fmt: AudioFormat):
        self.format = fmt
        self.rate = FORMAT_RATES[fmt]
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0
        self._odd = b""

    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.format == "audio/pcm" else 1)

    def convert(self, data: bytes) -> np.ndarray:
        """16 kHz int16 samples for `data` (a few samples may come out with the next chunk)."""
        if self.format == "audio/pcm":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            samples = np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
        else:
            samples = G711[self.format][np.frombuffer(data, dtype=np.uint8)]
        if not len(samples):
            return np.zeros(0, np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts, frame.time_base = self._pts, Fraction(1, self.rate)
        self._pts += len(samples)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16, copy=False) if out else np.zeros(0, np.int16)
