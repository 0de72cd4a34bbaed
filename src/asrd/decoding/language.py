"""Each job's language (and its tokenizer): given, English for an English-only model, or
detected from its first window: on a short encoding at admission, or on the window's full
encoding where that was unsure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .packing import Pack
from .windows import Job

if TYPE_CHECKING:
    import ctranslate2

    from .whisper import Whisper


# Language detection at admission encodes this much of a request's first window: 8x cheaper
# than its 30 s input on a CPU, and as reliable where it is sure. Where it isn't (a top
# probability under SURE), the full encoding decides, as in faster-whisper: the first
# window's own (no extra pass), or one of its own where word timings need the language first.
DETECT_S = 10.0
SURE = 0.9


def prepare(job: Job, whisper: Whisper) -> None:
    """At admission: set the job's language, so that its windows can be packed with other
    requests' from the first batch on; unless the detection is unsure, then its first
    window is decoded alone and its own encoder pass decides (`detect`)."""
    language = job.options.language if whisper.multilingual else "en"
    if language is None and job.windows:
        first = job.windows[0]
        language, probability = whisper.detect_language(
            job.samples, first.start, first.end, DETECT_S
        )
        if probability < SURE:
            if not job.options.word_timestamps:
                return
            language, probability = whisper.detect_language(job.samples, first.start, first.end)
        job.language_probability = probability
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
