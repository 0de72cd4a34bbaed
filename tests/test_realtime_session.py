"""A live session's event flow on real speech (real VAD, real resampling) with a fake model
that 'hears' one word per 0.4 s of audio: turn events, item ordering, append-only deltas
while the turn is still open, manual commits, clears, limits and bad events. The real model
over a real WebSocket is tests/test_realtime.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from asrd.realtime.session import RealtimeSession, SessionLimits, SessionOver
from asrd.registry import ModelNotServed
from asrd.transcript import Segment, TranscribeOptions, Transcript

from conftest import CLIPS, decode_pcm

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()  # noqa: SIM905


class CountingSlot:
    """Hears one word per 0.4 s of audio."""

    public_id, accepting, multilingual = "tiny.en", True, False

    def __init__(
        self, language: str = "en", multilingual: bool = False, delay_s: float = 0.01
    ) -> None:
        self.delay_s = delay_s
        self.priorities: list[object] = []
        self.calls: list[tuple[float, bool]] = []
        self.languages: list[str | None] = []  # the language each call was given
        self.language, self.multilingual = language, multilingual

    def in_use(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # type: ignore[return-value]

    def check_language(self, language: str | None) -> None:
        if language not in (None, "en"):
            raise ValueError("English-only")

    async def transcribe(
        self, samples: np.ndarray, options: TranscribeOptions, *, background: object = False,
        speech: list | None = None,
    ) -> Transcript:  # fmt: skip
        duration = len(samples) / 16_000
        self.calls.append((duration, bool(getattr(background, "background", background))))
        self.languages.append(options.language)
        self.priorities.append(background)
        await asyncio.sleep(self.delay_s)
        text = " " + " ".join(WORDS[: int(duration / 0.4)])
        return Transcript([Segment(0.0, duration, text)], self.language, duration, 0.97)


class Registry:
    def __init__(self, slot: CountingSlot):
        self.slot = slot

    def get(self, name: str | None) -> CountingSlot:
        if name in (None, "", "tiny.en", "whisper-1"):
            return self.slot
        raise ModelNotServed(f"{name} is not served")


def pcm24(samples: np.ndarray) -> bytes:
    """float32 16 kHz -> 24 kHz pcm16 (test-side, by linear interpolation)."""
    positions = np.arange(int(len(samples) * 1.5)) / 1.5
    resampled = np.interp(positions, np.arange(len(samples)), samples)
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def speech(name: str = "en_ls_1272-128104-0000.wav") -> np.ndarray:
    return decode_pcm(CLIPS[name].read())


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), np.float32)


class Harness:
    def __init__(self, limits: SessionLimits | None = None, slot: CountingSlot | None = None):
        self.slot = slot or CountingSlot()
        self.events: list[dict[str, Any]] = []
        self.executor = ThreadPoolExecutor(1)
        self.session = RealtimeSession(
            models=Registry(self.slot),  # type: ignore[arg-type]
            executor=self.executor,
            limits=limits or SessionLimits(15 * 2**20, 0.5, 3600),
            send=self._send,
        )

    async def _send(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def append(self, audio: bytes, chunk_bytes: int = 4800, pause_s: float = 0.002) -> None:
        for i in range(0, len(audio), chunk_bytes):
            piece = base64.b64encode(audio[i : i + chunk_bytes]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": piece})
            await asyncio.sleep(pause_s)  # let partial re-decodes run, as a paced client would

    async def send(self, event: dict[str, Any]) -> None:
        import json

        await self.session.handle(json.dumps(event))

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    async def settle(self) -> None:
        await self.session.drain(5)
        await self.session.close()
        self.executor.shutdown()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_server_vad_turns_deltas_and_ordered_items() -> None:
    async def scenario() -> Harness:
        h = Harness()
        await h.session.start()
        audio = np.concatenate([silence(0.5), speech(), silence(1.2), speech(), silence(1.2)])
        await h.append(pcm24(audio), pause_s=0.015)  # the fake model takes 10 ms
        await h.settle()
        return h

    h = run(scenario())
    types = h.types()
    assert types[0] == "session.created"
    assert types.count("input_audio_buffer.speech_started") == 2
    assert types.count("input_audio_buffer.committed") == 2
    committed = h.of("input_audio_buffer.committed")
    assert committed[0]["previous_item_id"] is None
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    added = h.of("conversation.item.added")
    assert [a["item"]["id"] for a in added] == [c["item_id"] for c in committed]
    completed = h.of("conversation.item.input_audio_transcription.completed")
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    for event in completed:
        assert event["transcript"].startswith("alpha bravo")
        assert event["usage"]["type"] == "duration" and event["usage"]["seconds"] > 5
    done = h.of("conversation.item.done")
    assert done[1]["item"]["content"][0]["transcript"] == completed[1]["transcript"]
    # Deltas: before the turn's speech stopped, append-only, a prefix of what the model heard.
    first_item = committed[0]["item_id"]
    deltas = [e for e in h.of("conversation.item.input_audio_transcription.delta")
              if e["item_id"] == first_item]  # fmt: skip
    assert len(deltas) >= 3
    stopped = types.index("input_audio_buffer.speech_stopped")
    assert h.events.index(deltas[0]) < stopped
    text = "".join(d["delta"] for d in deltas)
    assert completed[0]["transcript"].startswith(text)
    # The re-decodes ran at low priority; one begun in the pause that ended a turn heard all
    # of it, so its text is the turn's final text (no decode after the turn ended).
    assert any(background for _, background in h.slot.calls)
    assert sum(not background for _, background in h.slot.calls) == 0


def test_manual_commits_and_clears() -> None:
    async def scenario() -> Harness:
        h = Harness()
        await h.session.start()
        await h.send({"type": "session.update",
                      "session": {"audio": {"input": {"turn_detection": None}}}})  # fmt: skip
        await h.send({"type": "input_audio_buffer.commit", "event_id": "c1"})  # empty: refused
        await h.append(pcm24(speech()), chunk_bytes=48_000)
        await h.send({"type": "input_audio_buffer.commit"})
        await h.append(pcm24(speech()[:16_000]))
        await h.send({"type": "input_audio_buffer.clear"})
        await h.settle()
        return h

    h = run(scenario())
    assert "input_audio_buffer.speech_started" not in h.types()
    assert h.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None
    error = h.of("error")[0]["error"]
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "c1")
    assert len(h.of("input_audio_buffer.committed")) == 1
    assert len(h.of("input_audio_buffer.cleared")) == 1
    completed = h.of("conversation.item.input_audio_transcription.completed")
    assert len(completed) == 1 and completed[0]["usage"]["seconds"] == pytest.approx(5.85, 0.05)


def test_bad_events_get_errors_and_the_session_goes_on() -> None:
    async def scenario() -> Harness:
        h = Harness()
        await h.session.start()
        await h.session.handle("{not json")
        await h.send({"type": "response.create", "event_id": "e2"})
        await h.send({"type": "input_audio_buffer.append", "audio": "@@@"})
        await h.send({"type": "session.update", "session": {"audio": {"input": {
            "transcription": {"model": "gpt-4o-realtime"}}}}})  # fmt: skip
        await h.send({"type": "session.update", "session": {"audio": {"input": {
            "transcription": {"language": "fr"}}}}})  # fmt: skip
        await h.send({"type": "session.update", "session": {"audio": {"input": {
            "transcription": {"model": "whisper-1"}}}}})  # fmt: skip
        await h.settle()
        return h

    h = run(scenario())
    codes = [e["error"]["code"] for e in h.of("error")]
    assert codes == ["invalid_json", "invalid_event", "invalid_value", "model_not_found",
                     "invalid_language"]  # fmt: skip
    assert h.of("error")[1]["error"]["event_id"] == "e2"
    updated = h.of("session.updated")
    assert updated[-1]["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"


def test_limits_buffer_and_session_audio() -> None:
    async def scenario() -> tuple[Harness, bool]:
        h = Harness(SessionLimits(max_buffer_bytes=64_000, partial_interval_s=0.5, max_session_s=3))
        await h.session.start()
        await h.send({"type": "session.update",
                      "session": {"audio": {"input": {"turn_detection": None}}}})  # fmt: skip
        await h.append(pcm24(silence(2.5)), chunk_bytes=48_000)  # 80 KB at 16 kHz: too much
        await h.send({"type": "input_audio_buffer.clear"})
        over = False
        try:
            await h.append(pcm24(silence(4)), chunk_bytes=48_000)
        except SessionOver as exc:
            over = exc.code == 1008
        await h.settle()
        return h, over

    h, over = run(scenario())
    assert "input_audio_buffer_full" in [e["error"]["code"] for e in h.of("error")]
    assert over


def test_a_multilingual_model_keeps_the_language_a_turn_made_clear() -> None:
    async def scenario() -> Harness:
        h = Harness(slot=CountingSlot(language="fr", multilingual=True))
        await h.session.start()
        audio = np.concatenate([speech(), silence(1.2), speech(), silence(1.2)])
        await h.append(pcm24(audio), pause_s=0.015)
        await h.settle()
        return h

    h = run(scenario())
    assert h.slot.languages[0] is None  # detected by the model at first
    assert h.slot.languages[-1] == "fr"  # then kept: no detection for every re-decode


def test_a_re_decode_still_on_its_way_when_the_turn_ends_becomes_its_final_decode() -> None:
    async def scenario() -> Harness:
        h = Harness(slot=CountingSlot(delay_s=0.5))  # slower than the pause that ends a turn
        await h.session.start()
        audio = np.concatenate([speech("en_timit_LDC93S1.wav"), silence(1.0)])
        await h.append(pcm24(audio), pause_s=0.1)  # real time
        await h.settle()
        return h

    h = run(scenario())
    completed = h.of("conversation.item.input_audio_transcription.completed")
    assert len(completed) == 1 and completed[0]["transcript"].startswith("alpha bravo")
    # No decode after the turn ended: the re-decode begun in the pause was promoted.
    promoted = [p for p in h.slot.priorities if getattr(p, "background", True) is False]
    assert len(promoted) == 1
    assert sum(1 for p in h.slot.priorities if p is False) == 0
