"""One clock for every live session's partial re-decodes: each tick, the sessions whose open
turn has grown enough submit their re-decodes together, in the same moment, so the scheduler
batches them (and packs them into shared model inputs) instead of taking each one alone as
its client's appends happen to arrive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class PartialTicker:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._listeners: set[Callable[[], None]] = set()
        self._task: asyncio.Task | None = None

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def discard(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    async def _run(self) -> None:
        while self._listeners:
            await asyncio.sleep(self.interval_s)
            for listener in list(self._listeners):
                try:
                    listener()
                except Exception:  # one session's bug must not stop the others' captions
                    log.exception("a live session's partial re-decode failed to start")

    async def close(self) -> None:
        self._listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
