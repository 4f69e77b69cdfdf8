"""The run engine's read-ahead budget: the reader waits only while more than the budget is held."""
from __future__ import annotations

import threading
import time

import numpy as np

from opsef_orchestrator.engine import _ReadAhead


def test_hold_and_release_count_bytes_per_token() -> None:
    ra = _ReadAhead(budget_bytes=100)
    a = ra.hold(np.zeros(60, np.uint8), jobs=2)
    b = ra.hold(np.zeros(30, np.uint8), jobs=1)
    assert ra.held == 90
    ra.release(a)
    assert ra.held == 90  # one of a's two jobs is still queued
    ra.release(b)
    ra.release(a)
    assert ra.held == 0


def test_wait_returns_at_once_under_budget_and_after_release_over_it() -> None:
    ra = _ReadAhead(budget_bytes=100)
    token = ra.hold(np.zeros(50, np.uint8), jobs=1)
    ra.wait(lambda: False)  # under budget: no wait
    big = ra.hold(np.zeros(200, np.uint8), jobs=1)  # one image larger than the budget is still held (and runs)
    released = threading.Event()

    def finish() -> None:
        time.sleep(0.2)
        released.set()
        ra.release(big)

    threading.Thread(target=finish).start()
    ra.wait(lambda: False)
    assert released.is_set() and ra.held == 50
    ra.release(token)


def test_wait_stops_when_told() -> None:
    ra = _ReadAhead(budget_bytes=1)
    ra.hold(np.zeros(10, np.uint8), jobs=1)
    waiter = threading.Thread(target=ra.wait, args=(lambda: True,), daemon=True)  # e.g. the output disk is full
    waiter.start()
    waiter.join(timeout=5)
    assert not waiter.is_alive(), "the reader kept waiting although told to stop"
