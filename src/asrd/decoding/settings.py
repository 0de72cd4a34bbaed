"""The decoder's settings, and the constants of Whisper's 30 s window."""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 30.0  # Whisper decodes 30 s at a time
N_FRAMES = 3000  # mel frames in a 30 s window
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodeSettings:
    batch_size: int = 16
    batch_wait_ms: float = 20.0
    encode_batch_size: int = 1
    beam_size: int = 5
    best_of: int = 5
    chunk_length_s: float = WINDOW_S
    vad_filter: bool = True
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    pack_windows: bool = True
