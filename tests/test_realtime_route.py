"""The Realtime API's WebSocket route and the middlewares around it, in-process with a fake
model (tests/fakes.py): keys in headers and in the browser subprotocol, the intent, the
origin check, MAX_REALTIME_SESSIONS, trailing slashes, metrics, a manual turn's events."""

from __future__ import annotations

import base64
import json

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from fakes import FakeSlot, fake_server

URL = "/v1/realtime?intent=transcription"
KEY = "route-key"
SECOND = base64.b64encode(b"\0\0" * 24_000).decode()  # 1 s of 24 kHz silence


def denied(client, url: str = URL, **kwargs) -> WebSocketDenialResponse:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect(url, **kwargs):
        pass
    return refused.value


def test_keys_are_checked_on_the_handshake() -> None:
    with fake_server(FakeSlot("tiny.en", multilingual=False), api_keys=[KEY]) as client:
        refused = denied(client)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert denied(client, headers={"Authorization": "Bearer nope"}).status_code == 401
        offered = ["realtime", f"openai-insecure-api-key.{KEY}"]
        with client.websocket_connect(URL, subprotocols=offered) as ws:
            assert ws.accepted_subprotocol == "realtime"
            assert ws.receive_json()["type"] == "session.created"
        with client.websocket_connect(URL, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert ws.receive_json()["type"] == "session.created"


def test_intent_origin_and_model_are_checked() -> None:
    with fake_server(FakeSlot("tiny.en"), cors_origins=["https://app.example"]) as client:
        assert denied(client, "/v1/realtime?intent=conversation").status_code == 400
        refused = denied(client, "/v1/realtime?model=gpt-realtime")
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "model"
        evil = denied(client, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        for origin in ("https://app.example", "http://testserver"):
            with client.websocket_connect(URL, headers={"Origin": origin}) as ws:
                assert ws.receive_json()["type"] == "session.created"
        # With intent=transcription, the SDK's `model` (OpenAI's realtime model) is ignored.
        with client.websocket_connect(URL + "&model=gpt-realtime") as ws:
            session = ws.receive_json()["session"]
            assert session["audio"]["input"]["transcription"]["model"] == "tiny.en"


def test_session_limit_metrics_and_a_manual_turn() -> None:
    slot = FakeSlot("tiny.en")
    with fake_server(slot, max_realtime_sessions=1) as client:
        with client.websocket_connect(URL) as ws:
            assert ws.receive_json()["type"] == "session.created"
            refused = denied(client, "/v1/realtime/?intent=transcription")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert client.get("/metrics").text.count("asrd_realtime_sessions 1.0") == 1
            manual = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
            ws.send_text(json.dumps({"type": "session.update", "session": manual}))
            assert ws.receive_json()["type"] == "session.updated"
            ws.send_bytes(b"\0\0")
            assert ws.receive_json()["error"]["code"] == "invalid_event"
            ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": SECOND}))
            ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
            kinds = []
            while "conversation.item.done" not in kinds:
                event = ws.receive_json()
                kinds.append(event["type"])
                if event["type"].endswith("transcription.completed"):
                    assert event["transcript"] == "Hello world. Bye."
                    assert event["usage"]["seconds"] == pytest.approx(1.0, abs=0.01)
        assert kinds[:2] == ["input_audio_buffer.committed", "conversation.item.added"]
        metrics = client.get("/metrics").text
        assert "asrd_realtime_sessions 0.0" in metrics
        assert "asrd_realtime_sessions_rejected_total 1.0" in metrics
        assert 'route="/v1/realtime",status="101"' in metrics


def test_a_message_too_big_closes_the_session() -> None:
    with (
        fake_server(FakeSlot("tiny.en"), realtime_max_message_mb=0.001) as client,
        client.websocket_connect(URL) as ws,
    ):
        ws.receive_json()
        ws.send_text("x" * 2000)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009
