"""Audio input: the bytes of an audio (or video) file, decoded in memory with PyAV to 16 kHz
mono 16-bit samples.

Every input is hostile until checked:
- only audio demuxers run (`ALLOWED_DEMUXERS`, checked on the bytes before FFmpeg opens them,
  and again by FFmpeg's own `format_whitelist`), and no protocol at all (`protocol_whitelist`):
  a playlist, SDP, HLS or concat script can't open a file or a socket on the server;
- decoding is bounded by the decoded length (`max_duration_s`), by CPU time (`max_cpu_s`), by
  a memory budget shared by every request (`reserve`, see `budget.py`) and by cancellation;
- a corrupt packet is skipped, as FFmpeg does, and the loss is reported in `warnings`;
  chained streams and changes of sample rate or channel layout are followed.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from . import probe

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2  # int16

# FFmpeg demuxers of audio and of the video containers audio arrives in. Names as FFmpeg has
# them; a demuxer whose name lists several ("mov,mp4,m4a,3gp,3g2,mj2") matches any of them.
ALLOWED_DEMUXERS = frozenset(
    {
        "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf",
        "dts", "eac3", "flac", "flv", "loas", "matroska", "mov", "mp3", "mpc", "mpc8",
        "mpeg", "mpegts", "ogg", "tta", "voc", "w64", "wav", "wv",
    }
)  # fmt: skip
_OPEN_OPTIONS = {
    "format_whitelist": ",".join(sorted(ALLOWED_DEMUXERS)),
    # No protocol is named "none": every nested open (playlist entries, SDP's RTP sockets,
    # HLS segments, external references) fails. The input itself is read from memory.
    "protocol_whitelist": "none",
}
GROW_SAMPLES = 60 * SAMPLE_RATE  # the sample buffer grows by a minute at a time
CHECK_EVERY_FRAMES = 32  # CPU time and cancellation are checked this often
MAX_DEMUX_ERRORS = 32  # consecutive unreadable spots before the rest is given up
MIN_LOSS_REPORTED_S = 0.5  # less lost audio than this (a damaged frame or two) goes unreported


class AudioError(Exception):
    """The input is not usable audio (undecodable, no audio stream, or no samples)."""


class UnsupportedFormat(AudioError):
    """The bytes are in a format that is not audio (a playlist, an image, subtitles, ...)."""

    def __init__(self, detected: str):
        super().__init__(
            f"the input is in a format asrd does not decode ({detected}); send an audio or "
            "video file (wav, flac, mp3, ogg, opus, webm, mp4/m4a, aac, ...)"
        )
        self.detected = detected


class AudioTooLong(Exception):
    """The audio is longer than the configured limit."""

    def __init__(self, limit_s: float):
        super().__init__(f"audio is longer than the limit of {limit_s:g} s (MAX_AUDIO_S)")
        self.limit_s = limit_s


class DecodeTooSlow(Exception):
    """Decoding used more CPU time than allowed (MAX_DECODE_CPU_S)."""

    def __init__(self, limit_s: float):
        super().__init__(
            f"decoding the audio took more than {limit_s:g} s of CPU time (MAX_DECODE_CPU_S): "
            "send it at a lower sample rate or with fewer channels"
        )
        self.limit_s = limit_s


class DecodeCancelled(Exception):
    """The request went away while its audio was being decoded."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # int16, 16 kHz mono
    warnings: tuple[str, ...] = ()
    format: str = ""  # the FFmpeg demuxer that read it

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode(
    data: bytes,
    *,
    max_duration_s: float | None = None,
    max_cpu_s: float | None = None,
    reserve: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
    declared: Callable[[float], None] | None = None,
) -> DecodedAudio:
    """Decode `data` to 16 kHz mono int16 samples.

    `reserve(n)` is called before the sample buffer grows by `n` bytes, `declared(s)` before
    decoding with the length the file's headers claim (if any); either may raise to refuse.
    Raises `AudioError` (`UnsupportedFormat`) for input that is not decodable audio,
    `AudioTooLong` as soon as the audio passes `max_duration_s`, `DecodeTooSlow` past
    `max_cpu_s` of this thread's CPU time, `DecodeCancelled` once `cancelled` is set.
    """
    container = _open(data)
    with container:
        stream = container.streams.audio[0]
        claimed_s = _declared_s(container, stream)
        if declared is not None and claimed_s is not None:
            declared(claimed_s)
        max_samples = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE)
        output = _SampleBuffer(reserve)
        converter = _MonoConverter()
        damage = _Damage()
        cpu_started = time.thread_time()
        for count, frame in enumerate(_frames(container, stream, damage), 1):
            output.extend(converter.convert(frame))
            if max_samples is not None and output.size > max_samples:
                raise AudioTooLong(max_duration_s or 0)
            if count % CHECK_EVERY_FRAMES == 0:
                if cancelled is not None and cancelled.is_set():
                    raise DecodeCancelled
                if max_cpu_s is not None and time.thread_time() - cpu_started > max_cpu_s:
                    raise DecodeTooSlow(max_cpu_s)
        output.extend(converter.flush())
        if max_samples is not None and output.size > max_samples:
            raise AudioTooLong(max_duration_s or 0)
        samples = output.finish()
        if samples.size == 0:
            raise AudioError("the input holds no audio samples" + damage.suffix())
        warnings = damage.warnings(len(samples) / SAMPLE_RATE, claimed_s)
        return DecodedAudio(samples, warnings, container.format.name)


def decode_audio(
    data: bytes, *, max_duration_s: float | None = None, as_int16: bool = False
) -> np.ndarray:
    """The samples of `data` (see `decode`), as float32 in [-1, 1] or, with `as_int16`, int16."""
    samples = decode(data, max_duration_s=max_duration_s).samples
    return samples if as_int16 else to_float32(samples)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in [-1, 1]; float input is returned as it is."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples


def probe_audio(data: bytes) -> None:
    """Raise `AudioError` unless `data` opens as a container with an audio stream whose
    first frames decode. Cheap: it reads only the start of the input."""
    with _open(data) as container:
        for _ in _frames(container, container.streams.audio[0], _Damage()):
            return
    raise AudioError("the input holds no audio samples")


def _open(data: bytes) -> av.container.InputContainer:
    """Open `data` with an allowed demuxer and no protocols; the container has an audio
    stream."""
    if not data:
        raise AudioError("the audio is empty (0 bytes)")
    detected = probe.detect_format(data)
    if detected is not None and not _allowed(detected):
        raise UnsupportedFormat(detected)
    try:
        container = av.open(
            io.BytesIO(data), mode="r", options=_OPEN_OPTIONS, metadata_errors="ignore"
        )
    except Exception as exc:  # PyAV raises many types for hostile input; all mean "not audio"
        if isinstance(exc, av.error.ArgumentError) and detected is None:
            # FFmpeg's own probing (which reads further than ours) found no allowed demuxer.
            raise AudioError("the input is not in a known audio or video format") from None
        raise AudioError(f"could not decode the audio: {_describe(exc)}") from None
    if not container.streams.audio:
        container.close()
        raise AudioError("no audio stream found in the input")
    return container


def _declared_s(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The length the file's headers give (None when they don't)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else None


def _allowed(demuxer: str) -> bool:
    return any(name in ALLOWED_DEMUXERS for name in demuxer.split(","))


class _Damage:
    """What was lost to corrupt data, for the warning that goes back to the client."""

    def __init__(self) -> None:
        self.skipped_s = 0.0  # packets of known length that failed to decode
        self.unreadable = 0  # spots the demuxer skipped, and packets of unknown length
        self.stopped_early = False
        self.first_error = ""

    def skip(self, packet: av.Packet | None, exc: Exception) -> None:
        self.first_error = self.first_error or _describe(exc)
        if packet is not None and packet.duration and packet.time_base:
            self.skipped_s += float(packet.duration * packet.time_base)
        else:
            self.unreadable += 1

    def suffix(self) -> str:
        return f" ({self.first_error})" if self.first_error else ""

    def warnings(self, kept_s: float, declared_s: float | None) -> tuple[str, ...]:
        """A frame or two lost at a damaged spot is not worth a warning (the ffmpeg command
        skips it too); more is. Demuxers that resync past garbage say nothing, so the length
        the file declares is compared with what was decoded too."""
        found = []
        if self.stopped_early:
            found.append(
                f"the audio is damaged beyond repair after {kept_s:.1f} s; only that part "
                "was transcribed"
            )
        elif self.unreadable or self.skipped_s >= MIN_LOSS_REPORTED_S:
            lost = f" (about {self.skipped_s:.1f} s)" if self.skipped_s >= 0.05 else ""
            found.append(f"damaged parts of the audio could not be decoded and were skipped{lost}")
        if declared_s and kept_s < declared_s * 0.98 - MIN_LOSS_REPORTED_S:
            found.append(
                f"the file says it holds {declared_s:.1f} s of audio but only {kept_s:.1f} s "
                "could be decoded (damaged or cut short)"
            )
        return tuple(found)


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream, damage: _Damage
) -> Iterator[av.AudioFrame]:
    """The stream's frames, skipping packets that fail to decode and spots the demuxer can't
    read (it resyncs after them), as the ffmpeg command does. Input with nothing decodable
    raises `AudioError`."""
    decoded_any = False
    for packet in _packets(container, damage):
        if packet.stream.index != stream.index:
            continue
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            damage.skip(packet, exc)
            continue
        for frame in frames:
            decoded_any = True
            yield frame
    if not decoded_any:
        raise AudioError("could not decode the audio" + (damage.suffix() or ": no audio frames"))


def _packets(container: av.container.InputContainer, damage: _Damage) -> Iterator[av.Packet]:
    errors = 0
    while True:
        try:
            for packet in container.demux():
                errors = 0
                yield packet
            return
        except av.error.EOFError:
            return
        except av.error.FFmpegError as exc:
            damage.skip(None, exc)
            errors += 1
            if errors >= MAX_DEMUX_ERRORS:
                damage.stopped_early = True
                return


class _MonoConverter:
    """Frames in any sample format, rate and channel count to 16 kHz mono int16, following
    changes of format mid-stream (chained Ogg, an MP3 whose sample rate changes)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._resampler: av.AudioResampler | None = None
        self._downmix = False  # numpy mixes the channels first (layouts FFmpeg can't remix)

    def convert(self, frame: av.AudioFrame) -> list[np.ndarray]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = []
        if key != self._key:
            out = self.flush()
            self._key = key
            self._downmix = len(frame.layout.channels) > 2
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        assert self._resampler is not None
        if self._downmix:
            frame = _mix_to_mono(frame)
        try:
            out += [_samples(f) for f in self._resampler.resample(frame)]
        except (av.error.FFmpegError, ValueError):
            if self._downmix:
                raise
            # FFmpeg can't remix this layout: mix the channels here, resample what is left.
            self._downmix = True
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            out += [_samples(f) for f in self._resampler.resample(_mix_to_mono(frame))]
        return out

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        out = [_samples(f) for f in self._resampler.resample(None)]
        self._resampler, self._key = None, None
        return out


def _mix_to_mono(frame: av.AudioFrame) -> av.AudioFrame:
    """The mean of all channels, as a float mono frame at the frame's own rate."""
    channels = len(frame.layout.channels)
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    if array.dtype == np.uint8:
        mono = (array.astype(np.float32).mean(axis=0) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.integer):
        mono = array.astype(np.float32).mean(axis=0) / float(np.iinfo(array.dtype).max)
    else:
        mono = array.astype(np.float32).mean(axis=0)
    mixed = av.AudioFrame.from_ndarray(mono[np.newaxis, :], format="flt", layout="mono")
    mixed.sample_rate = frame.sample_rate
    return mixed


def _samples(frame: av.AudioFrame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1)


class _SampleBuffer:
    """A growing int16 array: grown in place (realloc, which moves pages rather than copying
    for large arrays), so decoding never holds the audio twice; every growth is reserved
    first."""

    def __init__(self, reserve: Callable[[int], None] | None):
        self._reserve = reserve
        self._array = np.empty(0, dtype=np.int16)
        self.size = 0

    def extend(self, pieces: list[np.ndarray]) -> None:
        for piece in pieces:
            end = self.size + piece.size
            if end > self._array.size:
                grow = max(GROW_SAMPLES, end - self._array.size)
                if self._reserve is not None:
                    self._reserve(grow * BYTES_PER_SAMPLE)
                self._array.resize(self._array.size + grow, refcheck=False)
            self._array[self.size : end] = piece
            self.size = end

    def finish(self) -> np.ndarray:
        """The samples, the unused tail given back (the reservation is the caller's to trim)."""
        self._array.resize(self.size, refcheck=False)
        return self._array


def _describe(exc: Exception) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
    # FFmpeg messages may quote the in-memory "file" name; keep them short and generic.
    return text.split(": '")[0][:200]
