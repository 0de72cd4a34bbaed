"""Server VAD: where a speaker's turn starts and stops, from the stream of Silero speech
probabilities (one per 32 ms window), with OpenAI's `server_vad` settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE
from ..vad import WINDOW

# Whisper sees 30 s at a time: a turn this long ends at its next short pause, and one that
# reaches MAX_TURN_S without any is cut there.
LONG_TURN_S = 20.0
SHORT_PAUSE_MS = 160
MAX_TURN_S = 29.0


@dataclass
class TurnDetection:
    """OpenAI's `server_vad` settings."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStarted:
    at: int  # samples since the stream's start (16 kHz)


@dataclass(frozen=True)
class SpeechStopped:
    at: int  # where the silence began (samples since the stream's start)
    detected: int  # where the silence had lasted long enough to end the turn


TurnEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """Silero's rules, live: speech starts at a window whose probability reaches `threshold`
    and stops after `silence_duration_ms` below `threshold - 0.15` (a window back above
    `threshold` cancels the silence)."""

    def __init__(self, settings: TurnDetection):
        self.settings = settings
        self.speaking = False
        self.started = 0
        self.silence_since: int | None = None

    def push(self, probabilities: np.ndarray, first_sample: int) -> list[TurnEvent]:
        """Events for consecutive windows' probabilities, the first window starting at
        `first_sample` of the stream."""
        threshold = self.settings.threshold
        quiet = max(threshold - 0.15, 0.01)
        events: list[TurnEvent] = []
        for index, probability in enumerate(probabilities.tolist()):
            position = first_sample + index * WINDOW
            end = position + WINDOW
            if not self.speaking:
                if probability >= threshold:
                    self.speaking, self.started, self.silence_since = True, position, None
                    events.append(SpeechStarted(position))
                continue
            if probability >= threshold:
                self.silence_since = None
            elif probability < quiet and self.silence_since is None:
                self.silence_since = position
            length_s = (end - self.started) / SAMPLE_RATE
            if self.silence_since is not None:
                needed_ms = self.settings.silence_duration_ms
                if length_s > LONG_TURN_S:
                    needed_ms = min(needed_ms, SHORT_PAUSE_MS)
                if (end - self.silence_since) * 1000 >= needed_ms * SAMPLE_RATE:
                    events.append(SpeechStopped(self.silence_since, end))
                    self.speaking, self.silence_since = False, None
                    continue
            if length_s >= MAX_TURN_S:  # no pause at all: cut, and go on with a new turn
                events += [SpeechStopped(end, end), SpeechStarted(end)]
                self.started, self.silence_since = end, None
        return events

    def reset(self) -> None:
        """The buffer was cleared or committed by the client: no turn in progress."""
        self.speaking, self.silence_since = False, None
