"""Requests that send no language, on a multilingual model (real `base`, real speech): their
language is detected at admission on a short encoding, and they share packed windows with
the other requests of their language; where that detection is unsure, the window's full
encoding decides, as before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asrd.audio import decode_audio
from asrd.audio_lanes import AudioLanes
from asrd.config import load_settings
from asrd.decoding import new_job
from asrd.decoding.language import SURE
from asrd.registry import ModelRegistry
from asrd.slot import ModelSlot
from asrd.transcript import TranscribeOptions

from conftest import CLIPS, wer

ENGLISH = [
    CLIPS["en_cmuarctic_a0024.wav"],  # 4 s
    CLIPS["en_ls_1272-128104-0000.wav"],  # 6 s
    CLIPS["en_riva_what_is_nlp.wav"],  # 4 s
    CLIPS["en_ms_whats_the_weather_like.wav"],  # 2 s
]
FR, DE = CLIPS["fr_picovoice_test_fr.wav"], CLIPS["de_picovoice_test_de.wav"]
TIMIT = CLIPS["en_timit_LDC93S1.wav"]  # base's short-encoding detection is unsure of it: 0.83


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSlot]:
    cache = Path(tmp_path_factory.mktemp("cache"))
    settings = load_settings(model_id="base", cache_dir=cache, cpu_threads=2, batch_size=8)
    models = ModelRegistry(settings, AudioLanes(settings))
    try:
        models.default.load_sync()
        yield models.default
    finally:
        models.close()


def transcribe_together(slot: ModelSlot, clips: list) -> list:
    """Submit the clips' jobs at once (cut beforehand), as concurrent requests arrive."""
    jobs = [
        new_job(decode_audio(clip.read(), as_int16=True), TranscribeOptions(), slot.decode_settings)
        for clip in clips
    ]
    for job in jobs:
        slot.scheduler.submit(job)
    return [job.future.result(timeout=120) for job in jobs]


def text(result) -> str:
    return "".join(segment.text for segment in result.segments)


def test_requests_without_a_language_share_windows(base: ModelSlot) -> None:
    scheduler = base.scheduler
    inputs, windows = scheduler.inputs, scheduler.batch_windows
    clips = [*ENGLISH, FR, DE]
    results = transcribe_together(base, clips)
    for clip, result in zip(clips, results, strict=True):
        assert result.language == clip.language
        assert result.language_probability >= SURE
        assert wer(clip.transcript, text(result)) <= 0.4, (clip.name, text(result))
    decoded, encoded = scheduler.batch_windows - windows, scheduler.inputs - inputs
    # The four English requests fit in two 30 s inputs: fewer encoder passes than windows.
    assert encoded <= decoded - 2, (encoded, decoded)
    assert scheduler.clock.seconds["detect"] > 0


def test_an_unsure_detection_is_settled_by_the_full_encoding(base: ModelSlot) -> None:
    (result,) = transcribe_together(base, [TIMIT])
    assert result.language == "en"
    assert result.language_probability < SURE  # the full encoding's own, as reported before
    assert "all year" in text(result).lower(), text(result)  # base mishears the middle


def test_word_timings_with_an_unsure_detection(base: ModelSlot) -> None:
    samples = decode_audio(TIMIT.read(), as_int16=True)
    transcript = base.transcribe_sync(samples, TranscribeOptions(word_timestamps=True))
    assert transcript.language == "en"
    assert transcript.segments[0].words, transcript
