"""OpenAI compatibility, tested with the official `openai` package against live servers."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from asrd.api.openai import AudioForm, _prompt
from asrd.config import DEFAULT_MODEL_ALIASES
from asrd.errors import ApiError
from asrd.models import ModelNames

from conftest import CLIPS, SAMPLE_RATE, SERVER_ENV, AsrdServer, encode, long_english_audio, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
LS = CLIPS["en_ls_1221-135766-0001.wav"]  # 16.7 s, several sentences
SHORT = CLIPS["en_cmuarctic_a0024.wav"]  # 4 s
TIMIT = CLIPS["en_timit_LDC93S1.wav"]  # 3 s: "... in greasy wash water all year"
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


ALIASES = list(DEFAULT_MODEL_ALIASES)  # what clients send: OpenAI's and Groq's names


def test_default_aliases_cover_the_names_clients_send() -> None:
    required = {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "whisper-large-v3",
        "whisper-large-v3-turbo",
    }
    assert required <= set(ALIASES)


SPELLINGS = [
    "tiny.en",
    "TINY.EN",
    "Systran/faster-whisper-tiny.en",
    "openai/whisper-tiny.en",
    "OpenAI/Whisper-Tiny.en",
    "whisper-tiny.en",
]


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    models = list(oai.models.list())
    assert [model.id for model in models] == ["tiny.en", *ALIASES]
    for model in models:
        extra = model.model_dump()
        assert extra["multilingual"] is False and extra["tasks"] == ["transcribe"]
        assert extra["alias_of"] == (None if model.id == "tiny.en" else "tiny.en")
    assert oai.models.retrieve("whisper-1").id == "whisper-1"
    assert oai.models.retrieve("tiny.en").object == "model"
    # A name with a slash is a path below /v1/models/ for the SDK.
    spelled = oai.models.retrieve("openai/whisper-tiny.en")
    assert spelled.id == "openai/whisper-tiny.en" and spelled.model_dump()["alias_of"] == "tiny.en"
    with pytest.raises(openai.NotFoundError) as excinfo:
        oai.models.retrieve("base")
    assert excinfo.value.code == "model_not_found"


def test_multilingual_model_lists_translation(oai_base: openai.OpenAI) -> None:
    models = [model.model_dump() for model in oai_base.models.list()]
    assert [model["id"] for model in models] == ["base", *ALIASES]
    assert all(m["multilingual"] and m["tasks"] == ["transcribe", "translate"] for m in models)


@pytest.mark.parametrize("name", ALIASES + SPELLINGS)
def test_every_model_name_transcribes(oai: openai.OpenAI, name: str) -> None:
    raw = oai.audio.transcriptions.with_raw_response.create(model=name, file=upload(SHORT))
    result = raw.parse()
    assert wer(SHORT.transcript, result.text) <= 0.15, result.text
    # asrd has no speaker diarization: the diarization model's name is served as a plain
    # transcription (what OpenAI returns for it with `json`), and the header says so.
    diarize = "diarize" in name
    assert raw.headers.get("X-Diarization") == ("unsupported" if diarize else None)


@pytest.mark.parametrize("name", ["whisper-9", "base", "tiny", "gpt-4o", "large-v3"])
def test_unknown_model_is_404_naming_what_is_served(oai: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        oai.audio.transcriptions.create(model=name, file=upload(SHORT))
    body = excinfo.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["param"] == "model"
    assert body["code"] == "model_not_found"
    assert f"`{name}`" in body["message"] and "`tiny.en`" in body["message"]
    assert all(f"`{alias}`" in body["message"] for alias in ALIASES)


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


# --- OpenAI's other parameters: honoured, accepted, or refused with the reason -----------------


def transcriptions_url(server: AsrdServer) -> str:
    return f"{server.url}/v1/audio/transcriptions"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_logprobs_are_refused_never_ignored(oai: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        oai.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=upload(SHORT), include=["logprobs"], stream=stream
        )
    body = excinfo.value.body
    assert body["param"] == "include" and body["code"] == "unsupported_value"
    assert "log-probabilities" in body["message"]


def test_include_without_brackets_and_unknown_values(server: AsrdServer) -> None:
    for data in ({"include": "logprobs"}, {"include[]": "segments"}, {"include": "x"}):
        response = httpx.post(
            transcriptions_url(server), data=data, files={"file": upload(SHORT)}, timeout=60
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "include"


def test_speaker_diarization_is_refused_when_asked_for(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        oai.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=upload(SHORT), response_format="diarized_json"
        )
    assert excinfo.value.body["param"] == "response_format"
    assert "diarization" in excinfo.value.body["message"]
    with pytest.raises(openai.BadRequestError) as excinfo:
        oai.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=upload(SHORT),
            known_speaker_names=["agent"],
            known_speaker_references=["data:audio/wav;base64,UklGRg=="],
        )
    assert excinfo.value.body["param"].startswith("known_speaker_")


def test_chunking_strategy_is_accepted(oai: openai.OpenAI, server: AsrdServer) -> None:
    vad = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500}
    for strategy in ("auto", vad):  # the SDK sends an object as chunking_strategy[type]=...
        result = oai.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=upload(SHORT), chunking_strategy=strategy
        )
        assert wer(SHORT.transcript, result.text) <= 0.15
    url = transcriptions_url(server)
    cases = [('{"type": "server_vad"}', 200), ("bogus", 400), ('{"type": "x"}', 400),
             ('{"threshold": 0.5}', 400)]  # fmt: skip
    for value, status in cases:
        response = httpx.post(
            url, data={"chunking_strategy": value}, files={"file": upload(SHORT)}, timeout=60
        )
        assert response.status_code == status, (value, response.text)
    nested = httpx.post(
        url, data={"chunking_strategy[type]": "other"}, files={"file": upload(SHORT)}, timeout=60
    )
    assert nested.status_code == 400 and nested.json()["error"]["param"] == "chunking_strategy"


@pytest.mark.parametrize(
    "value,segments,words",
    [("word", False, True), ("word,segment", True, True), (["word", "segment"], True, True)],
    ids=["word", "comma-separated", "repeated"],
)
def test_timestamp_granularities_without_brackets(
    server: AsrdServer, value: str | list[str], segments: bool, words: bool
) -> None:
    data = {"timestamp_granularities": value, "response_format": "verbose_json"}
    response = httpx.post(
        transcriptions_url(server), data=data, files={"file": upload(JFK)}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["segments"] is not None) is segments
    assert bool(body.get("words")) is words
    bad = httpx.post(
        transcriptions_url(server),
        data={"timestamp_granularities": "sentence"},
        files={"file": upload(SHORT)},
        timeout=60,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "timestamp_granularities"


def test_keywords_guide_the_transcription(oai: openai.OpenAI) -> None:
    # tiny.en hears "greasy wash for"; told the phrase, it writes it.
    result = oai.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=upload(TIMIT), keywords=["greasy wash-water"]
    )
    assert "wash-water" in result.text, result.text
    assert wer(TIMIT.transcript, result.text) <= 0.3


def test_languages(oai: openai.OpenAI, oai_base: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper-1", file=upload(SHORT), languages=["en"]
    )
    assert wer(SHORT.transcript, result.text) <= 0.15
    with pytest.raises(openai.BadRequestError, match="English-only"):
        oai.audio.transcriptions.create(
            model="whisper-1", file=upload(SHORT), languages=["en", "fr"]
        )
    for languages in (["fr"], ["de", "fr"]):  # one is the language; several: detected
        result = oai_base.audio.transcriptions.create(
            model="whisper-1", file=upload(FR), languages=languages, response_format="verbose_json"
        )
        assert result.language == "french" and wer(FR.transcript, result.text) <= 0.4


def test_trailing_slashes_are_served(server: AsrdServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.post("/v1/audio/transcriptions/", files={"file": upload(SHORT)})
        assert response.status_code == 200, response.text
        assert wer(SHORT.transcript, response.json()["text"]) <= 0.15
        translation = http.post("/v1/audio/translations/", files={"file": upload(SHORT)})
        assert translation.json()["error"]["code"] == "unsupported_task"  # not an empty 307
        assert http.get("/v1/models/").json()["data"][0]["id"] == "tiny.en"
        assert http.get("/v1/models/whisper-1/").json()["id"] == "whisper-1"
    with openai.OpenAI(base_url=f"{server.url}/v1/", api_key="unused", max_retries=0) as client:
        text = client.audio.transcriptions.create(model="whisper-1", file=upload(SHORT)).text
        assert wer(SHORT.transcript, text) <= 0.15


# --- the official npm `openai` package under Node -----------------------------------------------

NODE = shutil.which("node")
NODE_DIR = Path(__file__).parent / "node"


def node_dependencies() -> None:
    """tests/node's `openai` package, as .ci/run installs it (`npm ci`) if not there yet."""
    if (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to install tests/node's dependencies: cd tests/node && npm ci"
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)


@pytest.mark.skipif(NODE is None, reason="node not installed")
def test_official_node_sdk(server: AsrdServer) -> None:
    node_dependencies()
    names = ALIASES + SPELLINGS
    done = subprocess.run(
        [NODE, "openai_client.mjs", f"{server.url}/v1", str(SHORT.path), *names],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    listed = result["models"]["list"]
    assert [model["id"] for model in listed] == ["tiny.en", *ALIASES]
    assert all(model["tasks"] == ["transcribe"] and not model["multilingual"] for model in listed)
    assert result["models"]["retrieved"]["alias_of"] == "tiny.en"
    assert set(result["byName"]) == set(names)
    for name, answer in result["byName"].items():
        assert wer(SHORT.transcript, answer["text"]) <= 0.15, (name, answer)
        assert answer["diarization"] == ("unsupported" if "diarize" in name else None)
    verbose = result["verbose"]
    assert verbose["language"] == "english" and verbose["segments"] and verbose["words"]
    assert verbose["duration"] == pytest.approx(SHORT.duration, abs=0.05)
    assert wer(SHORT.transcript, " ".join(word["word"] for word in verbose["words"])) <= 0.15
    assert wer(SHORT.transcript, " ".join(cue.content for cue in srt.parse(result["srt"]))) <= 0.15
    assert wer(SHORT.transcript, result["chunking"]["text"]) <= 0.15
    *deltas, done_event = result["stream"]
    assert deltas and set(deltas) == {"transcript.text.delta"}
    assert done_event["type"] == "transcript.text.done"
    assert wer(SHORT.transcript, done_event["text"]) <= 0.15
    refused = result["refused"]
    assert refused["unknownModel"] | {"message": ""} == {
        "refused": True, "class": "NotFoundError", "status": 404, "code": "model_not_found",
        "param": "model", "type": "invalid_request_error", "message": "",
    }  # fmt: skip
    assert "`tiny.en`" in refused["unknownModel"]["message"]
    assert (refused["logprobs"]["status"], refused["logprobs"]["param"]) == (400, "include")
    diarized = refused["diarizedJson"]
    assert (diarized["class"], diarized["param"]) == ("BadRequestError", "response_format")
    assert refused["translationOnEnglishOnly"]["code"] == "unsupported_task"


# --- name resolution and form parsing, without a server ------------------------------------------


def test_model_names_and_aliases(tmp_path: Path) -> None:
    names = ModelNames([("tiny.en", "tiny.en")], dict.fromkeys(ALIASES, ""))
    assert names.aliases_of(0) == ALIASES
    for spelling in [
        *SPELLINGS,
        " tiny.en ",
        "tiny.en/",
        *ALIASES,
        "WHISPER-1",
        "GPT-4o-Transcribe",
    ]:
        assert names.find(spelling) == 0, spelling
    for other in ("tiny", "base.en", "openai/whisper-tiny", "large-v3", "whisper-2", ""):
        assert names.find(other) is None, other
    # Targets: "" is MODEL_ID; so is MODEL_ID's own name when a smaller model stands in for it
    # (DEVELOP_MODE, CPU_FALLBACK_MODEL); a model not served is no target.
    names = ModelNames(
        [("large-v3", "tiny.en")], {"whisper-1": "", "x": "openai/whisper-large-v3", "y": "base"}
    )
    assert names.aliases_of(0) == ["whisper-1", "x"]
    assert names.find("x") == 0 and names.find("large-v3") is None
    assert names.find("y") is None and "alias (MODEL_ALIASES) of `base`" in names.not_served("y")
    # A local directory is known by its name, never shown by its path.
    local = tmp_path / "my-ct2-whisper"
    local.mkdir()
    names = ModelNames([(str(local), str(local))], {"whisper-1": ""})
    assert names.public_ids == ["my-ct2-whisper"] and str(tmp_path) not in names.not_served("z")
    assert names.find("My-CT2-Whisper") == 0 and names.find(str(local)) == 0


def form(**fields) -> AudioForm:
    return AudioForm(file=None, **fields)  # type: ignore[arg-type]


def test_prompt_takes_keywords() -> None:
    assert _prompt(form()) is None
    assert _prompt(form(prompt="Inaugural address.")) == "Inaugural address."
    assert _prompt(form(prompt="Hi.", keywords=["NLP"], keywords_plain=[" ASR ", ""])) == (
        "Hi. NLP, ASR"
    )
    with pytest.raises(ApiError) as excinfo:
        _prompt(form(prompt="x" * 3990, keywords=["y" * 20]))
    assert excinfo.value.param == "keywords"


# --- server-wide defaults: thresholds and subtitle caps ---------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    # An impossible compression threshold makes every window "fail" its check, so every one
    # must be decoded again at a higher temperature. SEGMENT_MAX_CHARS caps every segment.
    # MODEL_ALIASES replaces the defaults: a bare alias, one spelled as a Hugging Face id,
    # and one naming a model this server does not serve.
    env = {
        **SERVER_ENV,
        "COMPRESSION_RATIO_THRESHOLD": "0.01",
        "SEGMENT_MAX_CHARS": "30",
        "MODEL_ALIASES": "whisper-1, My-ASR=openai/whisper-tiny.en, whisper-large-v3=large-v3",
    }
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


def test_model_aliases_from_the_environment(tuned: openai.OpenAI) -> None:
    assert [model.id for model in tuned.models.list()] == ["tiny.en", "whisper-1", "my-asr"]
    result = tuned.audio.transcriptions.create(model="MY-ASR", file=upload(SHORT))
    assert wer(SHORT.transcript, result.text) <= 0.3
    for name, why in (
        ("whisper-large-v3", "alias (MODEL_ALIASES) of `large-v3`"),
        ("gpt-4o-transcribe", "does not exist"),  # the defaults were replaced
    ):
        with pytest.raises(openai.NotFoundError) as excinfo:
            tuned.audio.transcriptions.create(model=name, file=upload(SHORT))
        message = excinfo.value.body["message"]
        assert why in message and "`whisper-1`, `my-asr`" in message, message
