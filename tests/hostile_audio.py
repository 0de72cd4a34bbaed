"""Hostile and damaged inputs, built at test time (nothing here is committed as a file):
playlists and other non-audio formats FFmpeg would read, decompression bombs, damaged and
chained files, audio with many channels."""

from __future__ import annotations

import io
import struct

import av
import numpy as np

SAMPLE_RATE = 16_000


def concat_playlist(path: str) -> bytes:
    """An ffconcat script naming a file (relative to the server's working directory)."""
    return f"ffconcat version 1.0\nfile '{path}'\n".encode()


def sdp(port: int) -> bytes:
    """A session description that makes FFmpeg listen for RTP on a UDP port."""
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=asrd test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


SBAGEN = b"-SE\n## 44 bytes\nalloff: -\nt: 200+10/50\nNOW t\n+3:00:00 alloff\n"
SUBTITLES = b"1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> 00:00:04,000\nworld\n"
HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsecret.wav\n#EXT-X-ENDLIST\n"


def encode(
    samples: np.ndarray,
    fmt: str,
    codec: str,
    rate: int = SAMPLE_RATE,
    layout: str = "mono",
) -> bytes:
    """float32 mono 16 kHz samples encoded with `codec` in container `fmt` at `rate`."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        position = 0
        for piece in resampler.resample(frame) + resampler.resample(None):
            piece.pts, position = position, position + piece.samples  # ogg wants timestamps
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def silence_flac(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A decompression bomb: hours of silence in a few hundred KB of FLAC."""
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    frame_size = 4608
    block = np.zeros((1, frame_size * channels), dtype=np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout=layout)
        frame.sample_rate = rate
        for start in range(0, int(seconds * rate), frame_size):
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def multichannel_wav(samples: np.ndarray, channels: int, rate: int) -> bytes:
    """16-bit PCM WAV with `channels` channels at `rate`, the speech on the last channel."""
    n = int(len(samples) * rate / SAMPLE_RATE)
    speech = np.interp(np.arange(n) * SAMPLE_RATE / rate, np.arange(len(samples)), samples)
    pcm = np.zeros((n, channels), dtype="<i2")
    pcm[:, -1] = (np.clip(speech, -1, 1) * 32767).astype("<i2")
    data = pcm.tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def with_garbage(data: bytes, at: float, garbage: bytes) -> bytes:
    """`garbage` inserted at fraction `at` of the file."""
    cut = int(len(data) * at)
    return data[:cut] + garbage + data[cut:]


def overwritten(data: bytes, at: float, length: int) -> bytes:
    """`length` bytes at fraction `at` of the file replaced by zeros (audio really lost)."""
    cut = int(len(data) * at)
    return data[:cut] + bytes(length) + data[cut + length :]
