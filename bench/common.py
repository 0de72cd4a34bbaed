"""Shared by the benchmark scripts: the machine stamp, test audio, targets (asrd or a peer)."""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import jiwer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from conftest import CLIPS, AsrdServer, Clip, encode, long_english_audio  # noqa: E402

__all__ = ["CLIPS", "RESULTS", "ROOT", "AsrdServer", "encode", "long_english_audio", "wer"]

# The workplace's shared speech (more clips than tests/data holds), used where it exists.
SHARED_AUDIO = ROOT.parent / "shared" / "audio"
VARIANT_TAGS = ("transcoded", "_8k", "_44k", "law", "_16k")


@dataclass(frozen=True)
class SharedClip(Clip):
    folder: Path = SHARED_AUDIO

    @property
    def path(self) -> Path:
        return self.folder / self.name


def speech_clips(language: str = "en", shortest: float = 0.0, longest: float = 1e9) -> list:
    """Distinct real clips (no transcoded variants) in `language`, from tests/data and, where
    present, the shared audio: sorted by name, so every run sends the same ones."""
    found: dict[str, Clip] = {}
    manifest = SHARED_AUDIO / "manifest.tsv"
    if manifest.exists():
        with manifest.open(newline="") as file:
            for row in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE):
                name, seconds = row["file"], float(row["duration_s"])
                found[Path(name).name] = SharedClip(
                    name, row["transcript"], row["language"], seconds
                )
    for clip in CLIPS.values():
        found.setdefault(clip.name, clip)
    return [
        clip
        for name, clip in sorted(found.items())
        if clip.language == language
        and shortest <= clip.duration <= longest
        and not any(tag in name for tag in VARIANT_TAGS)
    ]


_normaliser = None


def normalise(text: str) -> str:
    """Whisper's English text normaliser (spelling, numbers, punctuation)."""
    global _normaliser
    if _normaliser is None:
        from whisper_normalizer.english import EnglishTextNormalizer

        _normaliser = EnglishTextNormalizer()
    return _normaliser(text)


def wer(reference: str, hypothesis: str) -> float:
    """Corpus WER after Whisper's English normaliser on both sides."""
    return jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or None  # fmt: skip
    versions = {}
    for package in ("asrd", "faster-whisper", "ctranslate2"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "gpu": gpu,
        "python": platform.python_version(),
        "versions": versions,
    }


def long_audio(min_seconds: float) -> tuple:
    """Real English clips joined with 0.75 s gaps, repeated to at least `min_seconds`."""
    repeats = 1
    samples, reference = long_english_audio(repeats=repeats)
    while len(samples) / 16000 < min_seconds:
        repeats += 1
        samples, reference = long_english_audio(repeats=repeats)
    return samples, reference


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Target:
    """Where requests go: a fresh `asrd serve` (default) or any server given by URL.

    `flavor` is `openai` (multipart to /v1/audio/transcriptions) or `asr` (raw body to /asr).
    """

    def __init__(self, url: str | None, flavor: str, model: str, env: dict | None = None):
        self.flavor, self.server = flavor, None
        if url is None:
            RESULTS.mkdir(parents=True, exist_ok=True)
            env = {"MODEL_ID": model, "LOG_LEVEL": "WARNING", **(env or {})}
            self.server = AsrdServer(env, RESULTS / f"asrd-{model}.log")
            self.server.wait_ready()
            url = self.server.url
        self.url = url.rstrip("/")
        self.model = model
        self.http = httpx.Client(base_url=self.url, timeout=3600)

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server else None

    def transcribe(
        self, audio: bytes, name: str = "audio.flac", language: str | None = None
    ) -> str:
        given = {"language": language} if language else {}
        if self.flavor == "asr":
            response = self.http.post("/asr", content=audio, params=given)
        else:
            response = self.http.post(
                "/v1/audio/transcriptions",
                files={"file": (name, audio)},
                data={"model": self.model, "response_format": "json", **given},
            )
        response.raise_for_status()
        return response.json()["text"]

    def close(self) -> None:
        self.http.close()
        if self.server:
            self.server.stop()


def reset_peak_rss(pid: int) -> bool:
    """Start the process's VmHWM over from its current RSS (Linux `clear_refs` 5), to measure
    the peak of one phase. False where that is not allowed (another user's process)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
