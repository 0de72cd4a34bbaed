"""Audio input: any container/codec FFmpeg knows, decoded in memory with PyAV to 16 kHz mono."""

from __future__ import annotations

import io

import av
import numpy as np

SAMPLE_RATE = 16_000


class AudioError(Exception):
    """The input is not usable audio (undecodable, no audio stream, or no samples)."""


class AudioTooLong(Exception):
    """The audio is longer than the configured limit."""

    def __init__(self, limit_s: float):
        super().__init__(f"audio is longer than the limit of {limit_s:g} s (MAX_AUDIO_S)")
        self.limit_s = limit_s


def decode_audio(
    data: bytes, *, max_duration_s: float | None = None, as_int16: bool = False
) -> np.ndarray:
    """Decode `data` to a float32 array of 16 kHz mono samples in [-1, 1] (or, with
    `as_int16`, the int16 samples: half the memory, for long audio held while it is decoded).

    A stream that turns corrupt part-way is kept up to the last good frame, as ffmpeg does;
    input with no decodable audio at all raises `AudioError`. Decoding stops as soon as the
    audio passes `max_duration_s` (raising `AudioTooLong`), so an over-long file costs no more
    than the limit.
    """
    if not data:
        raise AudioError("the audio is empty (0 bytes)")
    max_samples = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream found in the input")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in _frames(container, stream):
                for out in resampler.resample(frame):
                    total += _append(pieces, out)
                if max_samples is not None and total > max_samples:
                    raise AudioTooLong(max_duration_s or 0)
            for out in resampler.resample(None):
                total += _append(pieces, out)
    except (AudioError, AudioTooLong):
        raise
    except Exception as exc:  # PyAV raises many types for hostile input; all mean "not audio"
        if not pieces:
            raise AudioError(f"could not decode the audio: {_describe(exc)}") from None
    if total == 0:
        raise AudioError("the input holds no audio samples")
    if max_samples is not None and total > max_samples:
        raise AudioTooLong(max_duration_s or 0)
    samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    del pieces
    return samples if as_int16 else to_float32(samples)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in [-1, 1]; float input is returned as it is."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples


def _frames(container: av.container.InputContainer, stream: av.AudioStream):
    """Yield decoded frames, stopping quietly at the first corrupt packet after good ones."""
    decoded_any = False
    try:
        for frame in container.decode(stream):
            decoded_any = True
            yield frame
    except av.error.InvalidDataError:
        if not decoded_any:
            raise


def _append(pieces: list[np.ndarray], frame: av.AudioFrame) -> int:
    array = frame.to_ndarray().reshape(-1)
    if array.size:
        pieces.append(array)
    return int(array.size)


def _describe(exc: Exception) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
    # FFmpeg messages may quote the in-memory "file" name; keep them short and generic.
    return text.split(": '")[0][:200]


def probe_audio(data: bytes) -> None:
    """Raise `AudioError` unless `data` opens as a container with an audio stream whose
    first frames decode. Cheap: it reads only the start of the input."""
    if not data:
        raise AudioError("the audio is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream found in the input")
            for _ in _frames(container, container.streams.audio[0]):
                return
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"could not decode the audio: {_describe(exc)}") from None
    raise AudioError("the input holds no audio samples")
