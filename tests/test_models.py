"""Model resolution: local dirs, bundled offline packages, Hugging Face names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrd.models import (
    ModelNotAvailable,
    baked_name,
    canonical_name,
    choose_model_id,
    is_model_dir,
    local_models,
    resolve_model,
)

from conftest import model_dir


@pytest.mark.parametrize(
    "given,expected",
    [
        ("openai/whisper-large-v3", "large-v3"),
        ("openai/whisper-large-v3-turbo", "large-v3-turbo"),
        ("openai/whisper-tiny.en", "tiny.en"),
        ("openai/whisper-large", "large-v1"),
        ("distil-whisper/distil-large-v2", "distil-large-v2"),
        ("distil-whisper/distil-large-v3", "distil-large-v3"),
        ("large-v3", "large-v3"),
        ("Systran/faster-whisper-small", "Systran/faster-whisper-small"),
    ],
)
def test_hugging_face_ids_map_to_ctranslate2_conversions(given: str, expected: str) -> None:
    assert canonical_name(given) == expected


def test_local_directory(tmp_path: Path) -> None:
    assert resolve_model(model_dir(), tmp_path) == Path(model_dir())
    with pytest.raises(ModelNotAvailable, match="no CTranslate2 Whisper model"):
        resolve_model(str(tmp_path), tmp_path)


def test_bundled_tiny_en_needs_no_network(tmp_path: Path) -> None:
    for name in ("tiny.en", "openai/whisper-tiny.en"):
        path = resolve_model(name, tmp_path, allow_download=False)
        assert is_model_dir(path)


def test_bundled_multilingual_base_is_assembled_once(tmp_path: Path) -> None:
    path = resolve_model("base", tmp_path, allow_download=False)
    assert is_model_dir(path) and path.is_relative_to(tmp_path)
    assert (path / "model.bin").stat().st_size > 100_000_000
    mtime = (path / "model.bin").stat().st_mtime_ns
    assert resolve_model("openai/whisper-base", tmp_path, allow_download=False) == path
    assert (path / "model.bin").stat().st_mtime_ns == mtime


def test_missing_model_without_download(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="is not in"):
        resolve_model("large-v3", tmp_path, allow_download=False)
    with pytest.raises(ModelNotAvailable, match="unknown model"):
        resolve_model("gigantic-v9", tmp_path, allow_download=False)


@pytest.mark.parametrize(
    ("model_id", "max_model", "chosen"),
    [
        ("large-v3", "turbo", "turbo"),
        ("large-v3-turbo", "turbo", "large-v3-turbo"),
        ("large-v3-turbo", "medium", "medium"),
        ("medium.en", "turbo", "medium.en"),
        ("small.en", "base", "base.en"),
    ],
)
def test_max_model_ranks_turbo_between_medium_and_large(
    model_id: str, max_model: str, chosen: str
) -> None:
    assert choose_model_id(model_id, on_cpu=False, max_model=max_model) == chosen


@pytest.mark.parametrize(
    ("given", "folder"),
    [
        ("tiny.en", "tiny.en"),
        ("openai/whisper-tiny.en", "tiny.en"),
        ("Systran/faster-whisper-tiny.en", "tiny.en"),
        ("systran/faster-whisper-large-v3", "large-v3"),
        ("openai/whisper-large-v3-turbo", "large-v3-turbo"),
        ("turbo", "large-v3-turbo"),
        ("distil-whisper/distil-large-v3", "distil-large-v3"),
        ("someone/my-ct2-whisper", "someone--my-ct2-whisper"),
    ],
)
def test_baked_folder_names(given: str, folder: str) -> None:
    assert baked_name(given) == folder


def test_asrd_download_into_bakes_a_model_found_in_any_spelling(tmp_path: Path) -> None:
    """What an image does at build time (`asrd download --into`), and what it finds at run time
    with an empty CACHE_DIR: the baked copy, never a download, never a write."""
    baked, cache = tmp_path / "baked", tmp_path / "cache"
    env = {**os.environ, "CACHE_DIR": str(tmp_path / "build-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "asrd", "download", "--into", str(baked), "openai/whisper-tiny.en"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"openai/whisper-tiny.en: {baked / 'tiny.en'}"
    assert is_model_dir(baked / "tiny.en") and not (baked / "tiny.en" / "model.bin").is_symlink()
    assert sorted(p.name for p in baked.iterdir()) == ["tiny.en"]  # no partial copy left
    for name in ("tiny.en", "Systran/faster-whisper-tiny.en", "openai/whisper-tiny.en"):
        assert (
            resolve_model(name, cache, baked_dir=baked, allow_download=False) == baked / "tiny.en"
        )
    assert not cache.exists()
    assert local_models(cache, baked)[0] == "tiny.en"
    # Another repo's model, baked by hand: found by its repo id.
    custom = baked / "someone--my-ct2-whisper"
    custom.mkdir()
    (custom / "model.bin").write_bytes(b"weights")
    (custom / "config.json").write_text("{}")
    path = resolve_model("someone/my-ct2-whisper", cache, baked_dir=baked, allow_download=False)
    assert path == custom and "someone/my-ct2-whisper" in local_models(cache, baked)
