"""Live transcription's pure parts, without a model: audio conversion, streaming VAD, turn
detection, the append-only partial text, the protocol's configuration and event shapes
(checked against the official `openai` SDK's own types)."""

from __future__ import annotations

import numpy as np
import pytest
from openai.types.beta.realtime.transcription_session import TranscriptionSession
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    RealtimeErrorEvent,
)
from openai.types.realtime.realtime_transcription_session_create_response import (
    RealtimeTranscriptionSessionCreateResponse,
)

from asrd.realtime.audio import G711, InputConverter
from asrd.realtime.captions import StablePrefix
from asrd.realtime.protocol import (
    EventError,
    SessionConfig,
    apply_update,
    error_event,
    event,
    session_json,
)
from asrd.realtime.session import SampleBuffer
from asrd.realtime.turns import (
    MAX_TURN_S,
    SpeechStarted,
    SpeechStopped,
    TurnDetection,
    TurnDetector,
)
from asrd.vad import WINDOW, StreamingVad, _probabilities

from conftest import CLIPS, SAMPLE_RATE, decode_pcm, encode


def test_g711_tables_match_ffmpeg() -> None:
    import av

    for fmt, codec in (("audio/pcmu", "pcm_mulaw"), ("audio/pcma", "pcm_alaw")):
        context = av.CodecContext.create(codec, "r")
        context.sample_rate, context.layout = 8000, "mono"
        frames = context.decode(av.Packet(bytes(range(256))))
        reference = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
        assert np.array_equal(G711[fmt], reference)


def test_24khz_pcm_is_resampled_across_chunk_edges() -> None:
    seconds = 2
    t = np.arange(24_000 * seconds) / 24_000
    tone = (np.sin(2 * np.pi * 440 * t) * 10_000).astype("<i2").tobytes()
    converter = InputConverter("audio/pcm")
    # Odd chunk sizes: half samples are carried over to the next chunk.
    out = np.concatenate([converter.convert(tone[i : i + 4801]) for i in range(0, len(tone), 4801)])
    assert abs(len(out) - SAMPLE_RATE * seconds) < 64
    expected = np.sin(2 * np.pi * 440 * np.arange(len(out)) / SAMPLE_RATE) * 10_000
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 50  # no clicks at chunk edges


def test_g711_input_is_expanded_and_resampled() -> None:
    converter = InputConverter("audio/pcmu")
    out = converter.convert(bytes(range(256)) * 8)  # 2048 samples at 8 kHz
    assert out.dtype == np.int16 and abs(len(out) - 4096) < 64


def test_streaming_vad_scores_as_the_whole_file_vad_does() -> None:
    samples = (decode_pcm(CLIPS["en_timit_LDC93S1.wav"].read()) * 32767).astype(np.int16)
    whole = np.concatenate(list(_probabilities(samples)))
    vad = StreamingVad()
    live = np.concatenate([vad.feed(samples[i : i + 777]) for i in range(0, len(samples), 777)])
    assert len(live) == len(samples) // WINDOW == vad.windows
    assert np.allclose(live, whole[: len(live)], atol=1e-5)


def probabilities(*runs: tuple[float, float]) -> np.ndarray:
    """Probabilities for (value, seconds) runs."""
    return np.concatenate([np.full(round(s * SAMPLE_RATE / WINDOW), v) for v, s in runs])


def test_turns_start_at_speech_and_stop_after_the_silence() -> None:
    detector = TurnDetector(TurnDetection(silence_duration_ms=500))
    events = detector.push(probabilities((0.0, 1.0), (0.9, 2.0), (0.0, 0.3), (0.9, 1.0)), 0)
    assert events == [SpeechStarted(31 * WINDOW)]  # a 0.3 s pause doesn't end the turn
    events = detector.push(probabilities((0.0, 1.0)), 4 * SAMPLE_RATE + 9 * WINDOW)
    assert len(events) == 1 and isinstance(events[0], SpeechStopped)
    stop = events[0]
    assert stop.at == 4 * SAMPLE_RATE + 9 * WINDOW  # where the silence began
    assert (stop.detected - stop.at) / SAMPLE_RATE == pytest.approx(0.5, abs=0.04)
    assert not detector.speaking


def test_a_turn_without_pauses_is_cut_before_whisper_s_window_ends() -> None:
    detector = TurnDetector(TurnDetection())
    events = detector.push(probabilities((0.9, MAX_TURN_S + 2)), 0)
    assert isinstance(events[1], SpeechStopped) and isinstance(events[2], SpeechStarted)
    assert events[1].at / SAMPLE_RATE == pytest.approx(MAX_TURN_S, abs=0.05)


def test_a_long_turn_ends_at_a_short_pause() -> None:
    detector = TurnDetector(TurnDetection(silence_duration_ms=800))
    events = detector.push(probabilities((0.9, 21.0), (0.0, 0.2)), 0)
    assert isinstance(events[-1], SpeechStopped)


def test_partial_text_only_appends_agreed_words() -> None:
    captions = StablePrefix()
    assert captions.update(" And so my") == ""  # one hypothesis: nothing agreed yet
    assert captions.update(" And so, my fellow") == "And so, my"  # not `fellow`: the newest
    assert captions.update(" And so, my fellow Americans") == " fellow"
    # A hypothesis that takes back what was sent: nothing, until two agree again past it.
    assert captions.update(" And then my fellow Americans ask") == ""
    assert captions.update(" And so my fellow Americans, ask not") == ""
    assert captions.update(" And so my fellow Americans, ask not what") == " Americans, ask not"
    assert captions.text == "And so, my fellow Americans, ask not"


def test_sample_buffer_addresses_audio_since_the_session_began() -> None:
    buffer = SampleBuffer()
    for start in range(0, 100, 10):
        buffer.append(np.arange(start, start + 10, dtype=np.int16))
    buffer.drop_before(35)
    assert (buffer.start, buffer.end, len(buffer)) == (35, 100, 65)
    assert list(buffer.slice(30, 40)) == [35, 36, 37, 38, 39]
    buffer.drop_before(100)
    assert len(buffer) == 0 and len(buffer.slice(0, 200)) == 0


def test_session_configuration_in_both_shapes_parses_with_the_sdk() -> None:
    config = SessionConfig(model="whisper-1")
    ga = session_json(config, "sess_1", 1, "ga")
    parsed = RealtimeTranscriptionSessionCreateResponse.model_validate(ga)
    assert parsed.audio.input.turn_detection.silence_duration_ms == 500
    assert parsed.audio.input.format.rate == 24_000
    beta = TranscriptionSession.model_validate(
        {**session_json(config, "s", 1, "beta"), "client_secret": {"value": "", "expires_at": 0}}
    )
    assert beta.input_audio_format == "pcm16"


def test_updates_change_only_the_fields_present() -> None:
    config = SessionConfig(model="tiny.en")
    update = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"language": "en", "prompt": "JFK"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
            }
        },
    }
    changed = apply_update(config, update, "ga")
    assert (changed.format, changed.model, changed.language, changed.prompt) == (
        "audio/pcmu", "tiny.en", "en", "JFK")  # fmt: skip
    assert changed.turn_detection.silence_duration_ms == 300
    assert changed.turn_detection.threshold == 0.5
    manual = apply_update(changed, {"audio": {"input": {"turn_detection": None}}}, "ga")
    assert manual.turn_detection is None and manual.format == "audio/pcmu"
    beta = apply_update(config, {"input_audio_format": "g711_alaw", "turn_detection": None}, "beta")
    assert beta.format == "audio/pcma" and beta.turn_detection is None
    # Beta's flat fields in a `session.update` are understood too.
    flat = apply_update(config, {"input_audio_transcription": {"model": "whisper-1"}}, "ga")
    assert flat.model == "whisper-1"


@pytest.mark.parametrize(
    ("update", "param"),
    [
        ({"type": "realtime"}, "session.type"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
         "session.audio.input.format.rate"),
        ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
         "session.audio.input.turn_detection.type"),
        ({"audio": {"input": {"turn_detection": {"threshold": 2}}}},
         "session.audio.input.turn_detection.threshold"),
        ({"audio": {"input": {"transcription": {"prompt": "x" * 5000}}}},
         "session.audio.input.transcription.prompt"),
        ({"include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
        ({"audio": "pcm"}, "session.audio"),
    ],
)  # fmt: skip
def test_updates_asrd_cannot_serve_are_refused(update: dict, param: str) -> None:
    with pytest.raises(EventError) as refused:
        apply_update(SessionConfig(), update, "ga")
    assert refused.value.param == param


def test_server_events_parse_with_the_sdk() -> None:
    completed = event(
        "conversation.item.input_audio_transcription.completed",
        item_id="item_1", content_index=0, transcript="Hi.",
        usage={"type": "duration", "seconds": 1.5},
    )  # fmt: skip
    assert ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(completed)
    error = error_event("bad", code="invalid_json", event_id="client_1")
    assert RealtimeErrorEvent.model_validate(error).error.event_id == "client_1"


def test_wav_helper_is_available() -> None:
    assert encode(np.zeros(160, np.float32))[:4] == b"RIFF"
