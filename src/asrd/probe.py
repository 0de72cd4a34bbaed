"""Which format FFmpeg would take some bytes for, without opening them.

FFmpeg's probe functions only score a buffer; opening is what runs a demuxer (and a playlist's
demuxer opens files). PyAV has no binding for probing, so FFmpeg's `av_probe_input_format3`
is called directly in the libavformat PyAV already loaded. Used to name what a refused input
is; FFmpeg's own `format_whitelist` is what enforces the allow-list when the input is opened.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import av

log = logging.getLogger(__name__)

PROBE_PADDING = 64  # FFmpeg wants AVPROBE_PADDING_SIZE (32) zero bytes after the data
PROBE_MAX_BYTES = 1 << 20
SCORE_RETRY = 25  # FFmpeg's AVPROBE_SCORE_RETRY: below it, probing reads more first


class _ProbeData(ctypes.Structure):
    _fields_ = [
        ("filename", ctypes.c_char_p),
        ("buf", ctypes.c_void_p),
        ("buf_size", ctypes.c_int),
        ("mime_type", ctypes.c_char_p),
    ]


@functools.cache
def _probe_function() -> ctypes._CFuncPtr | None:
    path = _libavformat_path()
    if path is None:
        log.warning("libavformat not found: refused inputs are not named by format")
        return None
    function = ctypes.CDLL(str(path)).av_probe_input_format3
    function.restype = ctypes.c_void_p  # const AVInputFormat*; its first field is the name
    function.argtypes = [ctypes.POINTER(_ProbeData), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    return function


def _libavformat_path() -> Path | None:
    """The libavformat this process has loaded for PyAV (Linux), else the one in its wheel."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            if "libavformat" in line and "/" in line:
                return Path(line[line.index("/") :])
    package = Path(av.__file__).parent
    for folder in (package.parent / "av.libs", package / ".dylibs"):
        found = sorted(folder.glob("libavformat*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def detect_format(data: bytes) -> str | None:
    """The name of the FFmpeg demuxer that would read `data` (e.g. `wav`, `concat`,
    `mov,mp4,m4a,3gp,3g2,mj2`), or None if none recognises it (or probing is unavailable).

    Probes growing prefixes as FFmpeg does, until one is recognised with confidence."""
    function = _probe_function()
    if function is None or not data:
        return None
    best: str | None = None
    size = 2048
    while True:
        size = min(size, len(data), PROBE_MAX_BYTES)
        buffer = ctypes.create_string_buffer(data[:size], size + PROBE_PADDING)
        probe = _ProbeData(b"", ctypes.cast(buffer, ctypes.c_void_p), size, None)
        score = ctypes.c_int(0)
        found = function(ctypes.byref(probe), 1, ctypes.byref(score))
        if found:
            best = ctypes.cast(found, ctypes.POINTER(ctypes.c_char_p))[0].decode("ascii")
            if score.value > SCORE_RETRY:
                return best
        if size >= min(len(data), PROBE_MAX_BYTES):
            return best
        size *= 2
