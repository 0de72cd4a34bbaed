"""Turns on the compute: models sharing a CPU take turns, so two never oversubscribe it.

Each scheduler (one per model) takes a turn for each batch's model work; turns are handed
out first come, first served, so two busy models alternate batch by batch (a bare Lock
isn't fair: the thread that just let go may well take it again at once). A GPU runs models
side by side: there the gate is concurrent, and taking a turn never waits.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator


class ComputeGate:
    def __init__(self, concurrent: bool = False):
        self.concurrent = concurrent
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()  # tickets of the turns asked for, in order
        self._busy = False

    @property
    def waiting(self) -> int:
        """Turns asked for and not yet given."""
        with self._changed:
            return len(self._queue)

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the compute for the `with` block, after those who asked before."""
        if self.concurrent:
            yield
            return
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                self._changed.wait_for(lambda: not self._busy and self._queue[0] is ticket)
            except BaseException:  # interrupted while waiting: don't hold up the others
                self._queue.remove(ticket)
                self._changed.notify_all()
                raise
            self._queue.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()
