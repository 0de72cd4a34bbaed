"""CUDA libraries from the nvidia pip packages are found and loaded without LD_LIBRARY_PATH
(faked packages: no GPU here)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asrd import cuda_libraries

LIBM = Path("/lib/x86_64-linux-gnu/libm.so.6")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site-packages with `nvidia.cublas` and `nvidia.cudnn` as pip lays them out."""
    for package in ("cublas", "cudnn"):
        (tmp_path / "nvidia" / package / "lib").mkdir(parents=True)
        (tmp_path / "nvidia" / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cuda_libraries, "_loaded", [])
    for name in [m for m in sys.modules if m == "nvidia" or m.startswith("nvidia.")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path


def test_the_pip_libraries_are_found_in_load_order(site: Path) -> None:
    for name in ("libcublas.so.12", "libcublasLt.so.12"):
        (site / "nvidia" / "cublas" / "lib" / name).write_bytes(b"")
    (site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9").write_bytes(b"")
    assert [p.name for p in cuda_libraries.pip_library_paths()] == [
        "libcublasLt.so.12", "libcublas.so.12", "libcudnn.so.9",
    ]  # fmt: skip


@pytest.mark.skipif(not LIBM.exists(), reason="needs a shared library to stand in for cuBLAS")
def test_loadable_libraries_are_loaded_and_broken_ones_skipped(site: Path) -> None:
    shutil.copy(LIBM, site / "nvidia" / "cublas" / "lib" / "libcublasLt.so.12")
    (site / "nvidia" / "cublas" / "lib" / "libcublas.so.12").write_bytes(b"not a library")
    loaded = cuda_libraries.load_pip_cuda_libraries()
    assert [p.name for p in loaded] == ["libcublasLt.so.12"]
    assert cuda_libraries.load_pip_cuda_libraries() == loaded  # once


def test_nothing_to_load_without_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_libraries, "LIBRARIES", {"asrd_no_such_package.lib": ["x.so"]})
    monkeypatch.setattr(cuda_libraries, "_loaded", [])
    assert cuda_libraries.load_pip_cuda_libraries() == []
