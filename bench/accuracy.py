"""Short-clip accuracy: asrd's decoding against faster-whisper's default, in one process.

    python bench/accuracy.py --model tiny.en
    python bench/accuracy.py --model base --systems lib-beam5,asrd,asrd-packed

The real English clips of /work/shared/audio (or tests/data), each also perturbed (white and
pink noise, a quiet copy, 0.9x and 1.1x speed, leading and trailing silence): the same int16
samples go to every system. Corpus WER (errors / reference words) after Whisper's English
normaliser on both sides, for faster-whisper `WhisperModel.transcribe` (sequential, beam 5:
its default; and greedy), asrd's scheduler in-process one request at a time and 8 at a time
(packed), and asrd with one change at a time (`VARIANTS`). Prints a table with the
differences to faster-whisper beam 5; writes bench/results/accuracy-<model>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import jiwer
import numpy as np
from common import RESULTS, ROOT, machine
from whisper_normalizer.english import EnglishTextNormalizer

from asrd.audio import SAMPLE_RATE, decode_audio

SHARED = Path("/work/shared/audio")
PACKED_TOGETHER = 8
normalise = EnglishTextNormalizer()


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray  # int16, 16 kHz
    reference: str


# --- the clip set ---------------------------------------------------------------------------


def real_clips() -> list[tuple[str, np.ndarray, str]]:
    """The distinct English clips (no transcoded copies): name, float32 samples, transcript."""
    base = SHARED if (SHARED / "manifest.tsv").exists() else ROOT / "tests" / "data"
    with (base / "manifest.tsv").open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [
        (Path(row["file"]).stem, decode_audio((base / row["file"]).read_bytes()), row["transcript"])
        for row in rows
        if row["language"] == "en" and not row["file"].startswith("variants/")
    ]


def noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(length)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))  # 1/f power
    return np.fft.irfft(spectrum, length)


def with_noise(audio: np.ndarray, kind: str, snr_db: float, seed: int) -> np.ndarray:
    added = noise(kind, len(audio), np.random.default_rng(seed))
    power = np.mean(audio**2) / 10 ** (snr_db / 10)
    return audio + added * np.sqrt(power / np.mean(added**2))


def with_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Played `factor` times faster (pitch too), by linear resampling."""
    positions = np.arange(0, len(audio) - 1, factor)
    return np.interp(positions, np.arange(len(audio)), audio)


def with_silence(audio: np.ndarray, lead_s: float, trail_s: float, seed: int) -> np.ndarray:
    """Leading and trailing room tone (noise 50 dB under the speech)."""
    lead, trail = int(lead_s * SAMPLE_RATE), int(trail_s * SAMPLE_RATE)
    padded = np.concatenate([np.zeros(lead), audio, np.zeros(trail)])
    floor = np.random.default_rng(seed).standard_normal(len(padded))
    return padded + floor * np.sqrt(np.mean(audio**2) / 1e5)


PERTURBATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "orig": lambda a, s: a,
    "white20": lambda a, s: with_noise(a, "white", 20, s),
    "pink10": lambda a, s: with_noise(a, "pink", 10, s),
    "quiet": lambda a, s: a * 0.1,
    "slow0.9": lambda a, s: with_speed(a, 0.9),
    "fast1.1": lambda a, s: with_speed(a, 1.1),
    "lead2.0": lambda a, s: with_silence(a, 2.0, 0.5, s),
    "trail3.0": lambda a, s: with_silence(a, 0.5, 3.0, s),
}


def clip_set(perturbations: list[str]) -> list[Clip]:
    """Every clip in each perturbation, one perturbation after another: requests submitted 8
    at a time are 8 different sentences (the same sentence 8 times in one pack would let the
    decoder copy from part to part)."""
    clips = []
    real = real_clips()
    for kind in perturbations:
        for index, (name, audio, reference) in enumerate(real):
            changed = PERTURBATIONS[kind](audio.astype(np.float64), index)
            pcm = (np.clip(changed, -1, 1) * 32767).astype(np.int16)
            clips.append(Clip(f"{name}:{kind}", pcm, reference))
    return clips


# --- timing the model's calls ---------------------------------------------------------------


class Timed:
    """The CTranslate2 model, with the seconds spent in its encoder and decoder counted."""

    def __init__(self, model):
        self._model = model
        self.seconds = {"encode": 0.0, "generate": 0.0}

    def __getattr__(self, name: str):
        found = getattr(self._model, name)
        if name not in self.seconds:
            return found

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return found(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


# --- systems ----------------------------------------------------------------------------------


def library(model, beam_size: int) -> Callable[[list[Clip]], list[str]]:
    def run(clips: list[Clip]) -> list[str]:
        texts = []
        for clip in clips:
            segments, _ = model.transcribe(
                clip.samples.astype(np.float32) / 32768.0, beam_size=beam_size, language="en"
            )
            texts.append(" ".join(s.text for s in segments))
        return texts

    return run


def asrd(model, together: int, **changes) -> Callable[[list[Clip]], list[str]]:
    """asrd's scheduler with its CPU defaults (`changes` replace some), `together` requests
    submitted at a time."""
    import dataclasses

    from asrd.config import Settings
    from asrd.decoding import Scheduler, new_job
    from asrd.devices import DeviceChoice, decode_settings
    from asrd.transcript import TranscribeOptions

    settings = dataclasses.replace(
        decode_settings(Settings(), DeviceChoice("cpu", "int8")), **changes
    )

    def run(clips: list[Clip]) -> list[str]:
        scheduler = Scheduler(settings)
        scheduler.model = model
        scheduler.start()
        texts = []
        try:
            for first in range(0, len(clips), together):
                jobs = [
                    new_job(clip.samples, TranscribeOptions(language="en"), settings)
                    for clip in clips[first : first + together]
                ]
                for job in jobs:
                    scheduler.submit(job)
                for job in jobs:
                    texts.append(" ".join(s.text for s in job.future.result().segments))
        finally:
            scheduler.stop()
        return texts

    return run


# --- asrd with one change: each a context manager patching its pipeline --------------------


@contextlib.contextmanager
def mel_padding(kind: str) -> Iterator[None]:
    """`audio`: 30 s of zero samples before the log-mel (openai-whisper); `mel`: the clip's
    log-mel padded with zeros in log-mel space (faster-whisper's sequential `transcribe`)."""
    from asrd.decoding.settings import N_FRAMES, WINDOW_S
    from asrd.decoding.whisper import Whisper

    def mel(self, chunk: np.ndarray) -> np.ndarray:
        if kind == "audio":
            padding = max(0, int(WINDOW_S * SAMPLE_RATE) - len(chunk)) + 160
            return self.model.feature_extractor(chunk, padding=padding)[:, :N_FRAMES]
        features = self.model.feature_extractor(chunk, padding=160)[:, :-1][:, :N_FRAMES]
        return np.pad(features, ((0, 0), (0, N_FRAMES - features.shape[-1])))

    with mock.patch.object(Whisper, "_mel", mel):
        yield


@contextlib.contextmanager
def whole_clip() -> Iterator[None]:
    """A request whose speech fits one window is decoded from 0 to its end (as the library
    decodes it), not from its VAD span's start to its end."""
    from asrd.decoding import windows

    original = windows.speech_windows

    def cut(samples: np.ndarray, settings) -> list:
        found = original(samples, settings)
        duration = len(samples) / SAMPLE_RATE
        if len(found) == 1 and duration <= settings.chunk_length_s:
            return [(0.0, duration, found[0][2])]
        return found

    with mock.patch.object(windows, "speech_windows", cut):
        yield


@contextlib.contextmanager
def vad_pad(ms: int) -> Iterator[None]:
    from faster_whisper.vad import VadOptions

    from asrd.decoding import windows

    def options(**kwargs) -> VadOptions:
        return VadOptions(speech_pad_ms=ms, **kwargs)

    with mock.patch.object(windows, "VadOptions", options):
        yield


@contextlib.contextmanager
def no_timestamps() -> Iterator[None]:
    """Decode without timestamps (one segment per window) when a window is a whole request."""
    from asrd.decoding.whisper import Whisper

    original = Whisper.generate

    def generate(self, packs, encoder_output, temperature, settings):
        flags = iter(len(p) == 1 and len(p[0].job.windows) == 1 for p in packs)
        get_prompt = self.model.get_prompt

        def prompt(tokenizer, previous, without_timestamps=False):
            return get_prompt(tokenizer, previous, without_timestamps=next(flags))

        with mock.patch.object(self.model, "get_prompt", prompt):
            return original(self, packs, encoder_output, temperature, settings)

    with mock.patch.object(Whisper, "generate", generate):
        yield


@contextlib.contextmanager
def no_second_pass() -> Iterator[None]:
    from asrd.decoding import checks

    with mock.patch.object(checks, "second_pass", lambda window, segments: []):
        yield


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


@dataclass(frozen=True)
class Variant:
    together: int = 1
    patch: Callable[[], contextlib.AbstractContextManager] = nothing
    changes: tuple = ()  # DecodeSettings fields


VARIANTS: dict[str, Variant] = {
    "asrd": Variant(),
    "asrd-packed": Variant(PACKED_TOGETHER),
    "asrd-melpad-audio": Variant(patch=lambda: mel_padding("audio")),
    "asrd-melpad-mel": Variant(patch=lambda: mel_padding("mel")),
    "asrd-whole-clip": Variant(patch=whole_clip),
    "asrd-vadpad-1000": Variant(patch=lambda: vad_pad(1000)),
    "asrd-no-timestamps": Variant(patch=no_timestamps),
    "asrd-no-second-pass": Variant(patch=no_second_pass),
    "asrd-beam5": Variant(changes=(("beam_size", 5),)),
    "asrd-greedy": Variant(changes=(("beam_size", 1),)),
    "asrd-no-packing": Variant(PACKED_TOGETHER, changes=(("pack_windows", False),)),
}


# --- scoring --------------------------------------------------------------------------------


def error_runs(ref: list[str], hyp: list[str], chunks: list) -> Iterator[tuple]:
    """Neighbouring edits taken together: (reference words, hypothesis words, errors)."""
    run: list = []
    for chunk in [*chunks, None]:
        if chunk is not None and chunk.type != "equal":
            run.append(chunk)
            continue
        if run:
            r = ref[run[0].ref_start_idx : run[-1].ref_end_idx]
            h = hyp[run[0].hyp_start_idx : run[-1].hyp_end_idx]
            n = sum(
                max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                if c.type == "substitute"
                else c.ref_end_idx - c.ref_start_idx + c.hyp_end_idx - c.hyp_start_idx
                for c in run
            )
            yield r, h, n
            run = []


def score(clips: list[Clip], texts: list[str]) -> dict:
    return score_texts([c.name for c in clips], [c.reference for c in clips], texts)


def score_texts(names: list[str], references: list[str], texts: list[str]) -> dict:
    references = [normalise(r) for r in references]
    hypotheses = [normalise(t) for t in texts]
    out = jiwer.process_words(references, hypotheses)
    errors = out.substitutions + out.deletions + out.insertions
    words = sum(len(r.split()) for r in references)
    kinds = {"number": 0, "split/join": 0, "word": 0}
    for ref, hyp, chunks in zip(references, hypotheses, out.alignments, strict=True):
        for r, h, n in error_runs(ref.split(), hyp.split(), chunks):
            if "".join(r) == "".join(h):
                kinds["split/join"] += n  # "for ever" / "forever"
            elif any(ch.isdigit() for ch in "".join(r + h)):
                kinds["number"] += n
            else:
                kinds["word"] += n
    # The spoken digit string is one "word" once normalised; hypotheses that write it with
    # spaces or commas get up to 15 formatting errors on it, so it is also left out.
    keep = [i for i, name in enumerate(names) if "digits" not in name]
    rest = jiwer.process_words([references[i] for i in keep], [hypotheses[i] for i in keep])
    return {
        "wer": errors / words,
        "errors": errors,
        "words": words,
        "clips": len(names),
        "wer_without_digits_clip": rest.wer,
        "error_kinds": kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default="lib-beam5,lib-greedy," + ",".join(VARIANTS))
    parser.add_argument("--perturbations", default=",".join(PERTURBATIONS))
    parser.add_argument("--output", default=None, help="JSON path (default: results/)")
    parser.add_argument("--rescore", default=None, help="score a JSON written before; no model")
    args = parser.parse_args()
    if args.rescore:
        rescore(Path(args.rescore))
        return

    from faster_whisper import WhisperModel

    from asrd.models import resolve_model

    path = resolve_model(args.model, Path.home() / ".cache" / "asrd", allow_download=False)
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=args.threads)
    timed = Timed(model.model)
    model.model = timed
    clips = clip_set(args.perturbations.split(","))
    audio_s = sum(len(c.samples) for c in clips) / SAMPLE_RATE
    print(f"{args.model}: {len(clips)} clips, {audio_s:.0f} s of audio")

    results: dict[str, dict] = {}
    for name in args.systems.split(","):
        if name.startswith("lib-"):
            run, patch = library(model, 5 if name == "lib-beam5" else 1), nothing
        else:
            variant = VARIANTS[name]
            run = asrd(model, variant.together, **dict(variant.changes))
            patch = variant.patch
        timed.seconds = dict.fromkeys(timed.seconds, 0.0)
        started = time.perf_counter()
        with patch():
            texts = run(clips)
        elapsed = time.perf_counter() - started
        results[name] = {
            **score(clips, texts),
            "seconds_per_clip": elapsed / len(clips),
            "encoder_s_per_clip": timed.seconds["encode"] / len(clips),
            "decoder_s_per_clip": timed.seconds["generate"] / len(clips),
            "texts": dict(zip((c.name for c in clips), texts, strict=True)),
        }
        report(name, results[name], results.get("lib-beam5"))

    output = Path(args.output) if args.output else RESULTS / f"accuracy-{args.model}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    references = {c.name: c.reference for c in clips}
    stamp = {"machine": machine(), "model": args.model, "date": time.strftime("%Y-%m-%d")}
    output.write_text(json.dumps(
        {**stamp, "audio_s": audio_s, "references": references, "systems": results}, indent=1
    ))  # fmt: skip
    print(f"wrote {output}")


def rescore(path: Path) -> None:
    """The table of an earlier run, and each clip where asrd and faster-whisper beam 5 differ."""
    data = json.loads(path.read_text())
    references = data["references"]
    names = list(references)
    systems = data["systems"]
    for name, result in systems.items():
        texts = [result["texts"][n] for n in names]
        report(name, {**result, **score_texts(names, [references[n] for n in names], texts)},
               systems.get("lib-beam5"))  # fmt: skip
    if "lib-beam5" in systems:
        for clip in names:
            row = {name: normalise(r["texts"][clip]) for name, r in systems.items()}
            if len(set(row.values())) > 1:
                print(f"\n{clip}\n  {'reference':22s} {normalise(references[clip])}")
                for name, text in row.items():
                    print(f"  {name:22s} {text}")


def report(name: str, result: dict, baseline: dict | None) -> None:
    versus = ""
    if baseline is not None:
        diff = (result["wer"] - baseline["wer"]) * 100
        ratio = result["wer"] / baseline["wer"] if baseline["wer"] else float("nan")
        versus = f" | vs lib-beam5 {diff:+.2f} pts ({ratio:.2f}x)"
    kinds = result["error_kinds"]
    print(
        f"{name:22s} WER {result['wer'] * 100:5.2f}% ({result['errors']}/{result['words']}) "
        f"no-digits {result['wer_without_digits_clip'] * 100:5.2f}% "
        f"[num {kinds['number']} join {kinds['split/join']} word {kinds['word']}] "
        f"{result['seconds_per_clip']:.2f} s/clip (enc {result['encoder_s_per_clip']:.2f}, "
        f"dec {result['decoder_s_per_clip']:.2f}){versus}",
        flush=True,
    )


if __name__ == "__main__":
    main()
