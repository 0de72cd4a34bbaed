"""The compute gate: models sharing a CPU take turns, first come first served."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from asrd.compute import ComputeGate


def wait_until(condition, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_two_busy_holders_alternate_turn_by_turn() -> None:
    gate = ComputeGate()
    order: list[str] = []
    ready = threading.Barrier(2)

    def work(name: str) -> None:
        ready.wait()
        for _ in range(20):
            with gate.turn():
                order.append(name)
                time.sleep(0.002)

    threads = [threading.Thread(target=work, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(order) == 40
    # Once both are waiting (at the latest when the turn first passes to the other), a holder
    # that lets go queues behind the other: strict alternation.
    first = next(i for i, name in enumerate(order) if name != order[0])
    assert all(x != y for x, y in itertools.pairwise(order[first:])), order


def test_turns_are_given_first_come_first_served() -> None:
    gate = ComputeGate()
    served: list[int] = []

    def take(index: int) -> None:
        with gate.turn():
            served.append(index)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(5)]
    with gate.turn():
        for count, thread in enumerate(threads, start=1):
            thread.start()
            wait_until(lambda n=count: gate.waiting == n)
    for thread in threads:
        thread.join(timeout=5)
    assert served == [0, 1, 2, 3, 4]


def test_a_turn_ends_even_when_its_work_fails() -> None:
    gate = ComputeGate()
    with pytest.raises(RuntimeError), gate.turn():
        raise RuntimeError("the batch failed")
    done = threading.Event()

    def take() -> None:
        with gate.turn():
            done.set()

    threading.Thread(target=take).start()
    assert done.wait(5)


def test_a_concurrent_gate_never_blocks() -> None:
    gate = ComputeGate(concurrent=True)
    inside = threading.Barrier(3, timeout=5)  # all three must be inside at once

    def work() -> None:
        with gate.turn():
            inside.wait()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert not inside.broken
    with gate.turn(), gate.turn():  # nested, same thread
        pass
