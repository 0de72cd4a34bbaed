"""`asrd transcribe`: files in, transcripts out, with progress bars.

With `--server URL` each file goes to a running asrd (streamed, so progress is real); without,
the model configured by the environment runs in this process. Either way the segments come
back with timings and are written in the asked format beside each input (or into `-o DIR`).
A file that fails is reported and skipped; the exit status is 1 if any failed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from tqdm import tqdm

from .audio import SAMPLE_RATE, AudioError, AudioTooLong, decode_audio
from .audio_lanes import AudioLanes
from .formats import render
from .languages import UnknownLanguage, language_code
from .registry import ModelRegistry
from .slot import ModelSlot
from .transcript import Segment, TranscribeOptions, Transcript, Word

EXTENSIONS = {
    "json": "json",
    "text": "txt",
    "srt": "srt",
    "vtt": "vtt",
    "verbose_json": "verbose.json",
}
BAR_FORMAT = (
    "{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}{postfix}]"
)


class FileFailed(Exception):
    """One file could not be transcribed; the message says why."""


def render_file(transcript: Transcript, fmt: str) -> str:
    """The file's contents: JSON formats indented, one line at the end."""
    body = render(transcript, fmt)
    if isinstance(body, str):
        return body
    return json.dumps(body, ensure_ascii=False, indent=2 if fmt == "verbose_json" else None) + "\n"


def output_path(source: Path, fmt: str, out_dir: Path | None) -> Path:
    return (out_dir or source.parent) / f"{source.stem}.{EXTENSIONS[fmt]}"


ProgressFn = Callable[[float], None]  # called with the audio seconds done so far


def transcribe_remote(
    client: httpx.Client,
    data: bytes,
    name: str,
    options: TranscribeOptions,
    progress: ProgressFn,
    model: str | None = None,
) -> Transcript:
    """Send one file to asrd's OpenAI route with `stream=true`; rebuild the transcript."""
    route = "translations" if options.task == "translate" else "transcriptions"
    form = {"stream": "true", "response_format": "json"}
    if options.language:
        form["language"] = options.language
    if model:
        form["model"] = model
    segments: list[Segment] = []
    try:
        with client.stream(
            "POST", f"/v1/audio/{route}", data=form, files={"file": (name, data)}
        ) as response:
            if response.status_code != 200:
                response.read()
                raise FileFailed(_error_message(response))
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise FileFailed(event["error"].get("message", "transcription failed"))
                if event.get("type") == "transcript.text.delta":
                    segment = _segment_from_event(event["segment"])
                    segments.append(segment)
                    progress(segment.end)
                elif event.get("type") == "transcript.text.done":
                    return Transcript(
                        segments=segments,
                        language=language_code(event.get("language") or "en"),
                        duration=float(event.get("duration", 0.0)),
                        task=options.task,
                    )
    except httpx.HTTPError as exc:
        raise FileFailed(f"could not reach the server: {exc}") from None
    raise FileFailed("the server closed the stream before the end of the transcript")


def _segment_from_event(detail: dict) -> Segment:
    words = [Word(w["start"], w["end"], " " + w["word"]) for w in detail.get("words", ())]
    fields = {k: detail[k] for k in ("id", "seek", "start", "end", "text", "tokens") if k in detail}
    for key in ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
        fields[key] = float(detail.get(key, 0.0))
    return Segment(**fields, words=words or None)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error.get('message')} (HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"the server answered HTTP {response.status_code}"


def run(
    files: list[Path],
    *,
    server: str | None,
    fmt: str,
    language: str | None,
    translate: bool,
    out_dir: Path | None,
    api_key: str | None = None,
    model: str | None = None,
) -> int:
    if language:
        try:
            language = language_code(language)
        except UnknownLanguage as exc:
            print(f"asrd: {exc}", file=sys.stderr)
            return 2
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    options = TranscribeOptions(language=language, task="translate" if translate else "transcribe")

    # Decode everything first: it is fast, gives the total for the overall bar, and finds
    # unreadable files before any waiting.
    failures: dict[Path, str] = {}
    decoded: dict[Path, tuple[bytes, float]] = {}
    for path in files:
        try:
            data = path.read_bytes()
            decoded[path] = (data, len(decode_audio(data)) / SAMPLE_RATE)
        except (OSError, AudioError, AudioTooLong) as exc:
            failures[path] = str(exc)
            print(f"asrd: {path}: {exc}", file=sys.stderr)

    slot: ModelSlot | None = None
    client: httpx.Client | None = None
    if decoded and server:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = httpx.Client(base_url=server.rstrip("/"), timeout=None, headers=headers)
    elif decoded:
        from .config import load_settings

        try:
            settings = load_settings(**({"model_id": model} if model else {}))
            slot = ModelRegistry(settings, AudioLanes(settings)).default
            slot.load_sync()
        except Exception as exc:  # a config or model error: nothing can be transcribed
            print(f"asrd: the model could not be loaded: {exc}", file=sys.stderr)
            return 1

    total = sum(duration for _, duration in decoded.values())
    overall = tqdm(total=total, desc="all files", bar_format=BAR_FORMAT, position=0, leave=True)
    started = time.perf_counter()
    done_before = 0.0
    try:
        for index, (path, (data, duration)) in enumerate(decoded.items(), start=1):
            bar = tqdm(
                total=duration,
                desc=f"[{index}/{len(decoded)}] {path.name}",
                bar_format=BAR_FORMAT,
                position=1,
                leave=False,
            )

            def progress(seconds: float, bar: tqdm = bar, done_before: float = done_before) -> None:
                seconds = min(seconds, bar.total)
                bar.update(seconds - bar.n)
                overall.update(done_before + seconds - overall.n)
                speed = overall.n / max(time.perf_counter() - started, 1e-6)
                overall.set_postfix_str(f"{speed:.1f}x realtime", refresh=True)

            try:
                if client is not None:
                    transcript = transcribe_remote(
                        client, data, path.name, options, progress, model
                    )
                else:
                    assert slot is not None
                    samples = decode_audio(data)
                    transcript = slot.transcribe_sync(samples, options, lambda s: progress(s.end))
                target = output_path(path, fmt, out_dir)
                target.write_text(render_file(transcript, fmt), encoding="utf-8")
                progress(duration)
                tqdm.write(f"{path} -> {target}", file=sys.stderr)
            except FileFailed as exc:
                failures[path] = str(exc)
                tqdm.write(f"asrd: {path}: {exc}", file=sys.stderr)
            except OSError as exc:
                failures[path] = str(exc)
                tqdm.write(f"asrd: {path}: cannot write the output: {exc}", file=sys.stderr)
            except Exception as exc:  # one bad file must not stop the others
                failures[path] = str(exc)
                tqdm.write(f"asrd: {path}: transcription failed: {exc}", file=sys.stderr)
            finally:
                bar.close()
                done_before += duration
                overall.update(done_before - overall.n)
    finally:
        overall.close()
        if client is not None:
            client.close()
        if slot is not None:
            slot.close()
    if failures:
        print(f"asrd: {len(failures)} of {len(files)} files failed", file=sys.stderr)
        return 1
    return 0
