"""Each job's language (and its tokenizer): given, English for an English-only model, or
detected from its first window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .packing import Pack
from .windows import Job

if TYPE_CHECKING:
    import ctranslate2

    from .whisper import Whisper


def prepare(job: Job, whisper: Whisper) -> None:
    """At admission: set the job's language, unless its first window's own encoder pass will
    find it (`detect`). Word timings need the language before the first batch."""
    language = job.options.language if whisper.multilingual else "en"
    if language is None and not job.options.word_timestamps:
        return
    if language is None and job.windows:
        first = job.windows[0]
        features = whisper.features(job.samples, first.start, first.end)
        language, job.language_probability = whisper.detect_language(features)
    set_language(job, whisper, language or "en")


def detect(packs: list[Pack], whisper: Whisper, encoder_output: ctranslate2.StorageView) -> None:
    """Set the language of jobs that didn't give one, from their first window's encoding (no
    extra encoder pass, unlike faster-whisper's separate detection)."""
    if all(pack[0].job.language is not None for pack in packs):
        return
    found = whisper.languages(encoder_output)
    for pack, (language, probability) in zip(packs, found, strict=True):
        job = pack[0].job
        if job.language is None:
            job.language_probability = probability
            set_language(job, whisper, language)


def set_language(job: Job, whisper: Whisper, language: str) -> None:
    job.language = language
    job.tokenizer = whisper.tokenizer(job.options.task, language)
