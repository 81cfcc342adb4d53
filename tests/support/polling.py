"""Waiting for something that happens in another process, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout_s: float = 60.0, interval_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; return that (or the last value)."""
    deadline = time.monotonic() + timeout_s
    result = check()
    while not result and time.monotonic() < deadline:
        time.sleep(interval_s)
        result = check()
    return result
