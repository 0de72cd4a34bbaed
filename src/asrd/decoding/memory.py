"""Handing freed memory back to the system."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the memory freed by finished requests back to the system (glibc keeps it in its
    heaps otherwise, and an idle server would look as big as its busiest moment)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
