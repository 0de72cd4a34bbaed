"""Voice activity detection (Silero VAD, the model faster-whisper ships) in bounded memory.

faster-whisper's `get_speech_timestamps` needs the whole audio as float32 and makes padded and
windowed copies of it: for 3 hours, over a gigabyte beside the 16-bit samples themselves, and
its 10,000-window model calls peak at ~250 MB inside onnxruntime. The model is the same here,
run over blocks of the int16 samples converted one block at a time (~60 MB at most), with the
64-sample context and the recurrent state carried across blocks as faster-whisper carries them
across its batches: the speech probabilities, and the spans found from them (Silero's rules,
below), are the same as faster-whisper's (tested), whatever the block size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from faster_whisper.vad import VadOptions, get_vad_model

from .audio import SAMPLE_RATE

WINDOW = 512  # samples per speech probability
CONTEXT = 64  # samples of the previous window the model sees before each window
BLOCK_WINDOWS = 1_000  # windows (32 s) per model call


def speech_spans(samples: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """(start, end) sample indices of the speech in `samples` (int16 or float32, 16 kHz)."""
    probabilities = np.concatenate(list(_probabilities(samples)) or [np.zeros(0, np.float32)])
    return _spans(probabilities, len(samples), options)


def _probabilities(samples: np.ndarray) -> Iterator[np.ndarray]:
    model = get_vad_model()
    # As faster-whisper does: pad to whole windows (a full window of zeros when already
    # whole), and the last CONTEXT samples of the padded audio are zeroed.
    windows = len(samples) // WINDOW + 1
    padded_length = windows * WINDOW
    state = np.zeros((1, 1, 128), dtype=np.float32), np.zeros((1, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    for first in range(0, windows, BLOCK_WINDOWS):
        start, end = first * WINDOW, min(first + BLOCK_WINDOWS, windows) * WINDOW
        block = np.zeros(end - start, dtype=np.float32)
        real = samples[start : min(end, len(samples))]
        block[: len(real)] = _as_float(real)
        if end == padded_length:
            block[-CONTEXT:] = 0.0
        rows = block.reshape(-1, WINDOW)
        contexts = np.concatenate([context[np.newaxis, :], rows[:-1, -CONTEXT:]])
        context = rows[-1, -CONTEXT:].copy()
        model_input = np.concatenate([contexts, rows], axis=1)
        output, h, c = model.session.run(None, {"input": model_input, "h": state[0], "c": state[1]})
        state = h, c
        yield output.reshape(-1)


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def _spans(probabilities: np.ndarray, length: int, options: VadOptions) -> list[tuple[int, int]]:
    """Silero's rules: speech starts where the probability reaches the threshold and ends after
    `min_silence_duration_ms` below `neg_threshold`; spans longer than `max_speech_duration_s`
    are cut at the last pause of at least 98 ms, else at the limit; spans shorter than
    `min_speech_duration_ms` are dropped; then each is padded by `speech_pad_ms` (half the gap
    each when two are closer than twice that)."""
    rate = SAMPLE_RATE
    threshold = options.threshold
    neg_threshold = options.neg_threshold
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    min_speech = rate * options.min_speech_duration_ms / 1000
    pad = rate * options.speech_pad_ms / 1000
    max_speech = rate * options.max_speech_duration_s - WINDOW - 2 * pad
    min_silence = rate * options.min_silence_duration_ms / 1000
    min_silence_at_max = rate * 98 / 1000

    spans: list[list[int]] = []
    triggered = False
    start = temp_end = prev_end = next_start = 0
    for i, probability in enumerate(probabilities.tolist()):
        position = WINDOW * i
        if probability >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = position
        if probability >= threshold and not triggered:
            triggered, start = True, position
            continue
        if triggered and position - start > max_speech:
            if prev_end:  # cut at the last long-enough pause
                spans.append([start, prev_end])
                if next_start < prev_end:
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = temp_end = 0
            else:  # no pause: cut here
                spans.append([start, position])
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if probability < neg_threshold and triggered:
            if not temp_end:
                temp_end = position
            if position - temp_end > min_silence_at_max:
                prev_end = temp_end
            if position - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                spans.append([start, temp_end])
            prev_end = next_start = temp_end = 0
            triggered = False
    if triggered and length - start > min_speech:
        spans.append([start, length])

    for i, span in enumerate(spans):
        if i == 0:
            span[0] = int(max(0, span[0] - pad))
        if i == len(spans) - 1:
            span[1] = int(min(length, span[1] + pad))
            continue
        following = spans[i + 1]
        silence = following[0] - span[1]
        if silence < 2 * pad:
            span[1] += int(silence // 2)
            following[0] = int(max(0, following[0] - silence // 2))
        else:
            span[1] = int(min(length, span[1] + pad))
            following[0] = int(max(0, following[0] - pad))
    return [(s, e) for s, e in spans]


class StreamingVad:
    """Speech probabilities of a live stream, one per WINDOW samples as they arrive, with the
    model's context and recurrent state carried from call to call (as `speech_spans` carries
    them across blocks). Not thread-safe: one stream, one caller at a time."""

    def __init__(self) -> None:
        self._model = get_vad_model()
        self._state = np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self.windows = 0  # windows scored so far

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the whole windows completed by `samples` (maybe none)."""
        audio = np.concatenate([self._pending, _as_float(samples)])
        whole = len(audio) // WINDOW * WINDOW
        self._pending = audio[whole:]
        if not whole:
            return np.zeros(0, np.float32)
        rows = audio[:whole].reshape(-1, WINDOW)
        contexts = np.concatenate([self._context[np.newaxis, :], rows[:-1, -CONTEXT:]])
        self._context = rows[-1, -CONTEXT:].copy()
        model_input = np.concatenate([contexts, rows], axis=1)
        h, c = self._state
        output, h, c = self._model.session.run(None, {"input": model_input, "h": h, "c": c})
        self._state = h, c
        self.windows += len(rows)
        return output.reshape(-1)
