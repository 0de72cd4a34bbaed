"""Live transcription end to end: the official `openai` SDK's realtime clients (GA and Beta)
against a real `asrd serve` with tiny.en, streaming real speech at real-time pace and faster;
keys (header and browser subprotocol), MAX_REALTIME_SESSIONS, the idle timeout, bad events,
and a client that vanishes."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from conftest import CLIPS, SERVER_ENV, AsrdServer, decode_pcm, metric, wer

KEY = "live-test-key"
CHUNK_S = 0.1


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrdServer]:
    log_path = tmp_path_factory.mktemp("logs-live") / "asrd.log"
    env = {**SERVER_ENV, "API_KEYS": KEY, "MAX_REALTIME_SESSIONS": "3",
           "REALTIME_IDLE_TIMEOUT_S": "3"}  # fmt: skip
    with AsrdServer(env, log_path) as instance:
        yield instance


def ws_url(server: AsrdServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1"


def client(server: AsrdServer, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=server.url + "/v1", websocket_base_url=ws_url(server))


def pcm24(samples: np.ndarray) -> bytes:
    """float32 16 kHz -> 24 kHz pcm16, as a client would send it (PyAV's resampler)."""
    return _encode(samples, "s16", 24_000)


def g711(samples: np.ndarray, codec: str) -> bytes:
    """float32 16 kHz -> 8 kHz G.711 (`pcm_mulaw` or `pcm_alaw`) bytes."""
    context = av.CodecContext.create(codec, "w")
    context.sample_rate, context.layout, context.format = 8000, "mono", "s16"
    pcm = _encode(samples, "s16", 8000)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, "<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in context.encode(frame) + context.encode(None))


def _encode(samples: np.ndarray, fmt: str, rate: int) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = 16_000
    resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
    out = resampler.resample(frame) + resampler.resample(None)
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in out)


def clip(name: str) -> tuple[np.ndarray, str]:
    return decode_pcm(CLIPS[name].read()), CLIPS[name].transcript


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), np.float32)


class Recorder:
    """Every server event with the time it arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []

    async def run(self, connection: Any) -> None:
        while True:
            raw = await connection.recv_bytes()
            self.events.append((time.monotonic(), json.loads(raw)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def when(self, event: dict[str, Any]) -> float:
        return next(t for t, e in self.events if e is event)

    async def wait_for(self, kind: str, count: int = 1, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while len(self.of(kind)) < count:
            assert time.monotonic() < deadline, f"no {count} {kind} in {within_s} s: {self.kinds()}"
            await asyncio.sleep(0.05)

    def kinds(self) -> list[str]:
        return [e["type"] for _, e in self.events]


async def stream(
    connection: Any, audio: bytes, bytes_per_s: int, pace: float | None
) -> list[float]:
    """Append `audio` in CHUNK_S chunks, at `pace` times real time (None: as fast as it goes);
    returns when each chunk was sent."""
    chunk = int(bytes_per_s * CHUNK_S) // 2 * 2
    sent, started = [], time.monotonic()
    for index, start in enumerate(range(0, len(audio), chunk)):
        if pace:
            await asyncio.sleep(max(0.0, started + index * CHUNK_S / pace - time.monotonic()))
        piece = base64.b64encode(audio[start : start + chunk]).decode()
        await connection.send({"type": "input_audio_buffer.append", "audio": piece})
        sent.append(time.monotonic())
    return sent


def test_server_vad_at_real_time_pace_partial_then_final_text(live: AsrdServer) -> None:
    first, first_text = clip("en_ls_1272-128104-0000.wav")
    second, second_text = clip("en_cmuarctic_a0024.wav")
    audio = np.concatenate([silence(0.5), first, silence(1.2), second, silence(1.5)])

    async def scenario() -> tuple[Recorder, list[float]]:
        recorder = Recorder()
        async with client(live).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            reading = asyncio.create_task(recorder.run(conn))
            await conn.send({"type": "session.update", "session": {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
            }})  # fmt: skip
            sent = await stream(conn, pcm24(audio), 48_000, pace=1.0)
            await recorder.wait_for("conversation.item.input_audio_transcription.completed", 2)
            await recorder.wait_for("conversation.item.done", 2)
            reading.cancel()
        return recorder, sent

    recorder, sent = asyncio.run(scenario())
    assert recorder.kinds()[:2] == ["session.created", "session.updated"]
    updated = recorder.of("session.updated")[0]["session"]
    assert updated["audio"]["input"]["transcription"]["language"] == "en"
    # One turn per sentence, chained in order, each completed in turn.
    committed = recorder.of("input_audio_buffer.committed")
    items = [c["item_id"] for c in committed]
    assert len(items) == 2 and committed[0]["previous_item_id"] is None
    assert committed[1]["previous_item_id"] == items[0]
    completed = recorder.of("conversation.item.input_audio_transcription.completed")
    assert [c["item_id"] for c in completed] == items
    assert wer(first_text, completed[0]["transcript"]) <= 0.25, completed[0]["transcript"]
    assert wer(second_text, completed[1]["transcript"]) <= 0.25, completed[1]["transcript"]
    assert completed[0]["usage"]["type"] == "duration"
    started = recorder.of("input_audio_buffer.speech_started")
    stopped = recorder.of("input_audio_buffer.speech_stopped")
    assert [e["item_id"] for e in started] == [e["item_id"] for e in stopped] == items
    assert 300 <= started[0]["audio_start_ms"] <= 1500  # the clip's speech begins at ~1.1 s
    done = recorder.of("conversation.item.done")
    assert done[0]["item"]["content"][0]["transcript"] == completed[0]["transcript"]
    # Partial text: append-only deltas agreeing with the final text; for the first (5 s)
    # sentence, the first one while it was still being spoken (before its speech end was even
    # sent).
    for index, item in enumerate(items):
        deltas = [d for d in recorder.of("conversation.item.input_audio_transcription.delta")
                  if d["item_id"] == item]  # fmt: skip
        if index == 0:
            assert deltas, recorder.kinds()
            speech_end = sent[min(len(sent) - 1, stopped[index]["audio_end_ms"] // 100)]
            assert recorder.when(deltas[0]) < speech_end
        if not deltas:
            continue  # a short sentence on a busy machine: its final text came first
        partial = "".join(d["delta"] for d in deltas)
        final_words = completed[index]["transcript"].split()
        same_length = " ".join(final_words[: len(partial.split())])
        assert wer(same_length, partial) <= 0.35, (partial, completed[index]["transcript"])
        assert recorder.when(deltas[-1]) <= recorder.when(completed[index])


def test_faster_than_real_time_with_pauses(live: AsrdServer) -> None:
    """JFK's pauses end turns (four); then another speaker: every word, in order."""
    first, first_text = clip("en_jfk_inaugural_1961.flac")
    second, second_text = clip("en_timit_LDC93S1.wav")
    audio = np.concatenate([first, silence(1.2), second, silence(1.2)])

    async def scenario() -> Recorder:
        recorder = Recorder()
        async with client(live).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            reading = asyncio.create_task(recorder.run(conn))
            await stream(conn, pcm24(audio), 48_000, pace=None)
            await recorder.wait_for("input_audio_buffer.committed", 2)
            await asyncio.sleep(0.5)  # the last turn's end is in the audio already sent
            count = len(recorder.of("input_audio_buffer.committed"))
            await recorder.wait_for("conversation.item.input_audio_transcription.completed", count)
            reading.cancel()
        return recorder

    recorder = asyncio.run(scenario())
    committed = recorder.of("input_audio_buffer.committed")
    completed = recorder.of("conversation.item.input_audio_transcription.completed")
    assert len(committed) >= 3
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    for earlier, later in itertools.pairwise(committed):
        assert later["previous_item_id"] == earlier["item_id"]
    heard = " ".join(c["transcript"] for c in completed)
    assert wer(f"{first_text} {second_text}", heard) <= 0.25, heard


def test_beta_client_manual_commit_g711(live: AsrdServer) -> None:
    speech, text = clip("en_ls_1272-128104-0000.wav")

    async def scenario() -> Recorder:
        recorder = Recorder()
        beta = client(live).beta.realtime
        async with beta.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
            reading = asyncio.create_task(recorder.run(conn))
            await conn.send({"type": "transcription_session.update", "session": {
                "input_audio_format": "g711_ulaw", "turn_detection": None,
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            }})  # fmt: skip
            await recorder.wait_for("transcription_session.updated")
            await stream(conn, g711(speech, "pcm_mulaw"), 8000, pace=4.0)
            await conn.send({"type": "input_audio_buffer.commit"})
            await recorder.wait_for("conversation.item.input_audio_transcription.completed")
            reading.cancel()
        return recorder

    recorder = asyncio.run(scenario())
    kinds = recorder.kinds()
    assert kinds[0] == "transcription_session.created"
    session = recorder.of("transcription_session.updated")[0]["session"]
    assert session["input_audio_format"] == "g711_ulaw" and session["turn_detection"] is None
    assert "input_audio_buffer.speech_started" not in kinds  # no server VAD
    created = recorder.of("conversation.item.created")
    assert created[0]["item"]["role"] == "user" and "conversation.item.added" not in kinds
    completed = recorder.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["item_id"] == created[0]["item"]["id"]
    assert wer(text, completed["transcript"]) <= 0.25, completed["transcript"]


def test_bad_events_get_error_events_and_the_session_goes_on(live: AsrdServer) -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        async with client(live).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            reading = asyncio.create_task(recorder.run(conn))
            await conn.send({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "a"})
            await conn.send({"type": "session.update", "session": {"type": "transcription",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}})  # fmt: skip
            await conn.send({"type": "response.create"})
            await conn.send({"type": "session.update", "session": {"type": "transcription",
                "audio": {"input": {"turn_detection": None}}}})  # fmt: skip
            await recorder.wait_for("session.updated")
            reading.cancel()
        return recorder

    recorder = asyncio.run(scenario())
    errors = [e["error"] for e in recorder.of("error")]
    assert [(e["code"], e["param"]) for e in errors] == [
        ("invalid_value", "audio"),
        ("unsupported_value", "session.audio.input.turn_detection.type"),
        ("invalid_event", "type"),
    ]
    assert errors[0]["event_id"] == "a" and errors[0]["type"] == "invalid_request_error"
    session = recorder.of("session.updated")[0]["session"]
    assert session["audio"]["input"]["turn_detection"] is None


def test_keys_in_headers_and_in_the_browser_subprotocol(live: AsrdServer) -> None:
    async def scenario() -> None:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with client(live, key="wrong").realtime.connect(
                extra_query={"intent": "transcription"}
            ):
                pass
        assert refused.value.response.status_code == 401
        body = refused.value.response.body or b""
        assert b"invalid_api_key" in body
        url = ws_url(live) + "/realtime?intent=transcription"
        offered = ["realtime", f"openai-insecure-api-key.{KEY}"]
        async with websockets.connect(url, subprotocols=offered) as ws:
            assert ws.subprotocol == "realtime"  # never the key
            assert '"session.created"' in await ws.recv()
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url, subprotocols=["realtime"]):
                pass

    asyncio.run(scenario())


def test_session_limit_idle_timeout_and_a_vanished_client(live: AsrdServer) -> None:
    url = ws_url(live) + "/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {KEY}"}
    speech, _ = clip("en_jfk_inaugural_1961.flac")

    async def metrics() -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(live.url + "/metrics")).text

    async def sessions() -> float:
        return metric(await metrics(), "asrd_realtime_sessions")

    async def scenario() -> None:
        # MAX_REALTIME_SESSIONS=3: a fourth is refused with 503.
        open_ = [await websockets.connect(url, additional_headers=headers) for _ in range(3)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers=headers)
        assert refused.value.response.status_code == 503
        # One vanishes mid-turn (no close frame); one stays silent past the idle timeout.
        vanishing, idle = open_[0], open_[1]
        await open_[2].close()
        audio = pcm24(speech)
        for start in range(0, 48_000 * 3, 4800):
            piece = audio[start : start + 4800]
            encoded = base64.b64encode(piece).decode()
            await vanishing.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": encoded})
            )
        vanishing.transport.abort()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(idle.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert "idle" in closed.value.rcvd.reason
        deadline = time.monotonic() + 15
        while await sessions() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        assert await sessions() == 0
        text = await metrics()
        assert metric(text, 'asrd_transcriptions_in_progress{model="tiny.en"}') == 0
        assert metric(text, "asrd_realtime_sessions_rejected_total") >= 1

    asyncio.run(scenario())
    log = Path(live.log_path).read_text()
    assert "live session" in log and "idle timeout" in log
