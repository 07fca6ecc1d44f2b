"""Polling with a bound: a guard against hangs in tests, never a timing assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], what: str = "condition", timeout_s: float = 30.0) -> Any:
    """Poll until ``predicate`` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
