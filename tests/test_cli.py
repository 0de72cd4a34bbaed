"""`asrd transcribe`: in-process and through a server, several files, one of them broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import srt

from conftest import CLIPS, AsrdServer, wer

JFK = CLIPS["en_jfk_inaugural_1961.flac"]
LS = CLIPS["en_ls_1089-134686-0001.wav"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asrd", "transcribe", *args],
        env={**os.environ, "MODEL_ID": "tiny.en", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_in_process_with_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF nothing here")
    out = tmp_path / "out"
    result = run_cli(str(JFK.path), str(broken), str(LS.path), "--format", "srt", "-o", str(out))
    assert result.returncode == 1
    assert f"{broken}: could not decode the audio" in result.stderr
    assert "1 of 3 files failed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "en_jfk_inaugural_1961.srt",
        "en_ls_1089-134686-0001.srt",
    ]
    cues = list(srt.parse((out / "en_jfk_inaugural_1961.srt").read_text()))
    assert wer(JFK.transcript, " ".join(c.content for c in cues)) <= 0.15
    # progress: audio seconds done, realtime multiple, ETA
    assert "s audio" in result.stderr and "x realtime" in result.stderr


def test_through_a_server_writes_beside_the_input(server: AsrdServer, tmp_path: Path) -> None:
    copy = tmp_path / "speech.flac"
    copy.write_bytes(JFK.read())
    outputs = {"text": "speech.txt", "vtt": "speech.vtt", "verbose_json": "speech.verbose.json"}
    for fmt, name in outputs.items():
        result = run_cli(str(copy), "--server", server.url, "--format", fmt)
        assert result.returncode == 0, result.stderr
        written = (tmp_path / name).read_text()
        if fmt == "text":
            assert wer(JFK.transcript, written) <= 0.15
        elif fmt == "vtt":
            assert written.startswith("WEBVTT\n\n00:00:00")
        else:
            body = json.loads(written)
            assert body["language"] == "english" and body["segments"]
            assert body["duration"] == JFK.duration


def test_server_errors_are_reported(server: AsrdServer, tmp_path: Path) -> None:
    result = run_cli(str(JFK.path), "--server", server.url, "--language", "fr", "-o", str(tmp_path))
    assert result.returncode == 1
    assert "English-only" in result.stderr
    down = run_cli(str(JFK.path), "--server", "http://127.0.0.1:9", "-o", str(tmp_path))
    assert down.returncode == 1 and "could not reach the server" in down.stderr
    bad = run_cli(str(JFK.path), "--language", "elvish")
    assert bad.returncode == 2 and "unknown language" in bad.stderr
