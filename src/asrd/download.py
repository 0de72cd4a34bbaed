"""`asrd download`: models into CACHE_DIR ahead of time, with a progress bar; with `--into`,
also copied into a baked-models directory (BAKED_MODELS_DIR: what a container image bakes)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .config import ConfigError, load_settings
from .models import ModelNotAvailable, bake, resolve_model


def download_models(names: list[str], into: Path | None = None) -> int:
    """Fetch each model (default: MODEL_ID and MODELS), and copy it into `into` if given; the
    exit status."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"asrd: {exc}", file=sys.stderr)
        return 2
    names = names or [settings.model_id, *settings.models]
    logging.basicConfig(level=logging.WARNING, format="asrd: %(message)s")
    failed = 0
    for name in names:
        with tqdm(desc=name, unit=" MB", bar_format="{desc}: {n:.1f}{unit} [{elapsed}]") as bar:

            def progress(megabytes: float, bar: tqdm = bar) -> None:
                bar.update(megabytes - bar.n)

            try:
                path = resolve_model(
                    name, settings.cache_dir, baked_dir=settings.baked_models_dir,
                    progress=progress,
                )  # fmt: skip
            except ModelNotAvailable as exc:
                bar.close()
                print(f"asrd: {name}: {exc}", file=sys.stderr)
                failed += 1
                continue
        if into is not None:
            try:
                path = bake(name, path, into)
            except OSError as exc:
                print(f"asrd: {name}: can't copy it into {into}: {exc}", file=sys.stderr)
                failed += 1
                continue
        print(f"{name}: {path}")
    return 1 if failed else 0
