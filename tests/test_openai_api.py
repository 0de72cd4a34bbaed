"""OpenAI compatibility, tested with the official `openai` package against live servers."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from conftest import CLIPS, SAMPLE_RATE, SERVER_ENV, AsrdServer, encode, long_english_audio, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
LS = CLIPS["en_ls_1221-135766-0001.wav"]  # 16.7 s, several sentences
FR = CLIPS["fr_picovoice_test_fr.wav"]
DE = CLIPS["de_picovoice_test_de.wav"]


def make_client(server: AsrdServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oai(server: AsrdServer) -> Iterator[openai.OpenAI]:
    with make_client(server) as client:
        yield client


@pytest.fixture(scope="module")
def oai_base(base_server: AsrdServer) -> Iterator[openai.OpenAI]:
    with make_client(base_server) as client:
        yield client


def upload(clip) -> tuple[str, bytes]:
    return (clip.name, clip.read())


# --- models ---------------------------------------------------------------------------------


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]
    assert ids == ["tiny.en", "whisper-1"]
    assert oai.models.retrieve("whisper-1").id == "whisper-1"
    assert oai.models.retrieve("tiny.en").object == "model"
    with pytest.raises(openai.NotFoundError) as excinfo:
        oai.models.retrieve("gpt-4o-transcribe")
    assert excinfo.value.code == "model_not_found"


def test_unknown_model_is_404_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        oai.audio.transcriptions.create(model="whisper-9", file=upload(JFK))
    body = excinfo.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["param"] == "model"


# --- response formats -----------------------------------------------------------------------


def test_json(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(model="whisper-1", file=upload(JFK))
    assert wer(JFK.transcript, result.text) <= 0.15
    assert result.usage.type == "duration" and result.usage.seconds == 11


def test_text(oai: openai.OpenAI, server: AsrdServer) -> None:
    text = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(JFK), response_format="text"
    )
    assert isinstance(text, str) and wer(JFK.transcript, text) <= 0.15
    raw = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": upload(JFK)},
        data={"response_format": "text"},
        timeout=60,
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.text == text


def test_srt_parses_and_is_monotonic(oai: openai.OpenAI) -> None:
    body = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(LS), response_format="srt"
    )
    assert body.startswith("1\n00:00:")
    cues = list(srt.parse(body))
    assert [cue.index for cue in cues] == list(range(1, len(cues) + 1))
    assert_cues_monotonic([(c.start.total_seconds(), c.end.total_seconds()) for c in cues], LS)
    assert wer(LS.transcript, " ".join(cue.content for cue in cues)) <= 0.2


def test_vtt_parses_and_is_monotonic(oai: openai.OpenAI) -> None:
    body = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(LS), response_format="vtt"
    )
    assert body.startswith("WEBVTT\n\n00:00:")
    assert ",000" not in body  # vtt uses '.' before the milliseconds
    cues = webvtt.from_buffer(io.StringIO(body)).captions
    assert cues
    assert_cues_monotonic([(c.start_in_seconds, c.end_in_seconds) for c in cues], LS)
    assert wer(LS.transcript, " ".join(cue.text for cue in cues)) <= 0.2


def assert_cues_monotonic(spans: list[tuple[float, float]], clip) -> None:
    previous = 0.0
    for start, end in spans:
        assert previous <= start <= end <= clip.duration + 0.01, spans
        previous = end


SEGMENT_FIELDS = {
    "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
    "compression_ratio", "no_speech_prob",
}  # fmt: skip


def test_verbose_json_default_has_segments_and_no_words(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(LS), response_format="verbose_json"
    )
    assert result.language == "english"
    assert result.duration == pytest.approx(LS.duration, abs=0.05)
    assert result.words is None
    assert result.segments and wer(LS.transcript, result.text) <= 0.2
    for index, segment in enumerate(result.segments):
        assert set(segment.model_dump()) >= SEGMENT_FIELDS
        assert segment.id == index and segment.tokens and segment.temperature == 0.0
        assert segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
    assert result.usage.type == "duration" and result.usage.seconds == 17


def test_verbose_json_word_only_has_words_and_null_segments(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1",
        file=upload(JFK),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert result.segments is None
    words = result.words
    assert [w.word.strip(",.").lower() for w in words[:4]] == ["and", "so", "my", "fellow"]
    assert all(w.word == w.word.strip() for w in words)
    previous = 0.0
    for word in words:
        assert previous <= word.start <= word.end <= JFK.duration
        previous = word.end
    assert wer(JFK.transcript, " ".join(w.word for w in words)) <= 0.15


def test_verbose_json_words_and_segments(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1",
        file=upload(JFK),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.segments and result.words
    assert result.words[0].start >= result.segments[0].start


def test_json_with_word_granularity_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        oai.audio.transcriptions.create(
            model="whisper-1", file=upload(JFK), timestamp_granularities=["word"]
        )
    assert excinfo.value.body["param"] == "timestamp_granularities"


# --- streaming --------------------------------------------------------------------------------


def test_streaming_deltas_arrive_before_the_end(oai: openai.OpenAI) -> None:
    samples, transcript = long_english_audio(repeats=2)
    audio = encode(samples, "flac")
    started = time.monotonic()
    deltas: list[tuple[float, str]] = []
    done = None
    stream = oai.audio.transcriptions.create(
        model="whisper-1", file=("long.flac", audio), stream=True
    )
    for event in stream:
        if event.type == "transcript.text.delta":
            deltas.append((time.monotonic() - started, event.delta))
        elif event.type == "transcript.text.done":
            done = (time.monotonic() - started, event.text)
    assert done is not None and len(deltas) > 5
    first_delta_at, done_at = deltas[0][0], done[0]
    assert first_delta_at < done_at * 0.8, (first_delta_at, done_at)
    assert "".join(delta for _, delta in deltas).strip() == done[1]
    assert wer(transcript, done[1]) <= 0.25


def test_streaming_short_file_and_error_before_stream(oai: openai.OpenAI) -> None:
    events = list(oai.audio.transcriptions.create(model="whisper-1", file=upload(JFK), stream=True))
    assert events[-1].type == "transcript.text.done"
    assert wer(JFK.transcript, events[-1].text) <= 0.15
    with pytest.raises(openai.BadRequestError):
        oai.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"junk"), stream=True)


# --- languages, translation -----------------------------------------------------------------


@pytest.mark.parametrize("clip,name", [(FR, "french"), (DE, "german")])
def test_language_detection(oai_base: openai.OpenAI, clip, name: str) -> None:
    result = oai_base.audio.transcriptions.create(
        model="whisper-1", file=upload(clip), response_format="verbose_json"
    )
    assert result.language == name
    assert wer(clip.transcript, result.text) <= 0.4


def test_language_given(oai_base: openai.OpenAI) -> None:
    result = oai_base.audio.transcriptions.create(
        model="whisper-1", file=upload(FR), language="fr", response_format="verbose_json"
    )
    assert result.language == "french" and wer(FR.transcript, result.text) <= 0.4


@pytest.mark.parametrize("clip", [FR, DE], ids=["fr", "de"])
def test_translation_outputs_english(oai_base: openai.OpenAI, clip) -> None:
    result = oai_base.audio.translations.create(
        model="whisper-1", file=upload(clip), response_format="verbose_json"
    )
    words = set(result.text.lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "of", "and", "in", "is", "was", "a", "it"}, result.text
    source_words = set(clip.transcript.lower().replace(",", " ").replace(".", " ").split())
    assert len(words & source_words) <= 2, result.text  # not a transcription
    assert result.language == "english"
    srt_body = oai_base.audio.translations.create(
        model="whisper-1", file=upload(clip), response_format="srt"
    )
    assert list(srt.parse(srt_body))


def test_bad_languages(oai: openai.OpenAI) -> None:
    for language in ("xx", "klingon"):
        with pytest.raises(openai.BadRequestError) as excinfo:
            oai.audio.transcriptions.create(model="whisper-1", file=upload(JFK), language=language)
        assert excinfo.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError, match="English-only"):
        oai.audio.transcriptions.create(model="whisper-1", file=upload(JFK), language="fr")
    result = oai.audio.transcriptions.create(model="whisper-1", file=upload(JFK), language="en")
    assert wer(JFK.transcript, result.text) <= 0.15


# --- options ------------------------------------------------------------------------------------


def test_temperature_above_zero_is_used(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(JFK), response_format="verbose_json", temperature=0.4
    )
    assert {segment.temperature for segment in result.segments} == {0.4}


def test_prompt_is_accepted(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(JFK), prompt="Inaugural address, 1961."
    )
    assert wer(JFK.transcript, result.text) <= 0.15


@pytest.mark.parametrize("chars", [30, 42])
def test_subtitle_segments_capped_in_characters(oai: openai.OpenAI, chars: int) -> None:
    body = oai.audio.transcriptions.create(
        model="whisper-1",
        file=upload(LS),
        response_format="srt",
        extra_body={"max_segment_chars": chars},
    )
    cues = list(srt.parse(body))
    assert len(cues) >= 5
    for cue in cues:
        assert len(cue.content) <= chars or " " not in cue.content, cue.content
    assert_cues_monotonic([(c.start.total_seconds(), c.end.total_seconds()) for c in cues], LS)
    assert wer(LS.transcript, " ".join(cue.content for cue in cues)) <= 0.2


def test_subtitle_segments_capped_in_seconds(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1",
        file=upload(LS),
        response_format="verbose_json",
        extra_body={"max_segment_s": 3},
    )
    assert len(result.segments) >= 5
    for segment in result.segments:
        assert segment.end - segment.start <= 3.0 or " " not in segment.text.strip()
    assert [s.id for s in result.segments] == list(range(len(result.segments)))


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,files",
    [
        ({"model": "whisper-1"}, {}),  # no file
        ({"model": "whisper-1", "response_format": "pdf"}, {"file": ("a.flac", JFK.read())}),
        ({"model": "whisper-1", "temperature": "2"}, {"file": ("a.flac", JFK.read())}),
        ({"model": "whisper-1"}, {"file": ("a.wav", b"")}),
        ({"model": "whisper-1"}, {"file": ("a.wav", b"not audio")}),
        ({"timestamp_granularities[]": "sentence"}, {"file": ("a.flac", JFK.read())}),
    ],
    ids=["no-file", "bad-format", "bad-temperature", "empty", "corrupt", "bad-granularity"],
)
def test_errors_are_400_in_openai_shape(server: AsrdServer, data: dict, files: dict) -> None:
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions", data=data, files=files or None, timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]


def test_silence_gives_empty_text(oai: openai.OpenAI) -> None:
    silence = encode(np.zeros(8 * SAMPLE_RATE, np.float32), "wav")
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=("silence.wav", silence), response_format="verbose_json"
    )
    assert result.text == "" and result.segments == []


# --- server-wide defaults: thresholds and subtitle caps ---------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    # An impossible compression threshold makes every window "fail" its check, so every one
    # must be decoded again at a higher temperature. SEGMENT_MAX_CHARS caps every segment.
    env = {**SERVER_ENV, "COMPRESSION_RATIO_THRESHOLD": "0.01", "SEGMENT_MAX_CHARS": "30"}
    server = AsrdServer(env, tmp_path_factory.mktemp("tuned") / "asrd.log")
    try:
        server.wait_ready()
        with make_client(server) as client:
            client.server = server  # type: ignore[attr-defined]
            yield client
    finally:
        server.stop()


def test_failed_windows_are_redecoded_with_temperature_fallback(tuned: openai.OpenAI) -> None:
    result = tuned.audio.transcriptions.create(
        model="whisper-1", file=upload(JFK), response_format="verbose_json"
    )
    # Every temperature of the schedule was tried (SERVER_ENV logs at DEBUG) ...
    log = tuned.server.log()  # type: ignore[attr-defined]
    for temperature in ("0.2", "0.4", "0.6", "0.8", "1.0"):
        assert f"inputs at temperature {temperature}" in log
    # ... and, as in Whisper, when all fail the best-scoring decoding is kept.
    assert result.segments
    assert wer(JFK.transcript, result.text) <= 0.3


def test_segment_cap_from_the_environment(tuned: openai.OpenAI) -> None:
    body = tuned.audio.transcriptions.create(
        model="whisper-1", file=upload(LS), response_format="srt"
    )
    cues = list(srt.parse(body))
    assert len(cues) >= 5
    assert all(len(cue.content) <= 30 or " " not in cue.content for cue in cues)


def test_oversize_upload_is_413_in_openai_shape(server: AsrdServer) -> None:
    big = b"\0" * (10 * 1024 * 1024)  # MAX_UPLOAD_MB=8
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions", files={"file": ("big.wav", big)}, timeout=60
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "MAX_UPLOAD_MB" in error["message"]
