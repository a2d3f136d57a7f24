"""Waiting for something another thread, process or service does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", *, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test after ``timeout``
    seconds (an ``AssertionError`` naming ``what``). The default is generous: a passing test returns at
    once, and CI's two cores are shared by the whole suite.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
