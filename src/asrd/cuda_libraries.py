"""CUDA's libraries from pip, found without LD_LIBRARY_PATH.

CTranslate2 4.x on a GPU opens CUDA 12's cuBLAS (`libcublas.so.12`, `libcublasLt.so.12`) and
cuDNN 9 (`libcudnn*.so.9`) by name when it first needs them. The pip packages
`nvidia-cublas-cu12` and `nvidia-cudnn-cu12` (`pip install 'asrd[gpu]'`) put them in
`site-packages/nvidia/*/lib`, where the dynamic loader doesn't look. Loading them here first,
by path and globally, makes CTranslate2's later lookups by name find them already loaded.
System-wide CUDA libraries (a CUDA base image) need none of this and are used as they are.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# In dependency order: cuBLASLt before cuBLAS, cuDNN's core before its engines. NVRTC (which
# nvidia-cudnn-cu12 9.x pulls in) is what cuDNN's runtime-compiled engines open by name.
LIBRARIES = {
    "nvidia.cublas": ["libcublasLt.so.12", "libcublas.so.12"],
    "nvidia.cuda_nvrtc": ["libnvrtc.so.12"],
    "nvidia.cudnn": ["libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9",
                     "libcudnn_cnn.so.9", "libcudnn_adv.so.9", "libcudnn_engines_precompiled.so.9",
                     "libcudnn_engines_runtime_compiled.so.9", "libcudnn_heuristic.so.9"],
}  # fmt: skip

_loaded: list[Path] = []


def pip_library_paths() -> list[Path]:
    """The CUDA libraries that the nvidia pip packages installed, in the order to load them."""
    found = []
    for package, names in LIBRARIES.items():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        folders = (spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            found += [Path(folder, "lib", n) for n in names if Path(folder, "lib", n).exists()]
    return found


def load_pip_cuda_libraries() -> list[Path]:
    """Load the pip-installed CUDA libraries, once (those that fail are skipped, with a
    debug line: CTranslate2 then reports what it misses). The libraries loaded."""
    if _loaded:
        return list(_loaded)
    for path in pip_library_paths():
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            log.debug("could not load %s: %s", path, exc)
            continue
        _loaded.append(path)
    if _loaded:
        log.info("CUDA libraries from pip: %s", ", ".join(p.name for p in _loaded))
    return list(_loaded)
