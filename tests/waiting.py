"""Bounded waiting in tests: polling with a deadline and stopping what a test started (a guard against hangs, never a timing assertion)."""

from __future__ import annotations

import subprocess
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


def stop_process(proc: "subprocess.Popen[bytes]", timeout_s: float = 10.0) -> None:
    """Stop a process a test started: SIGTERM, then SIGKILL if it has not exited within
    ``timeout_s``; reaped either way, so no test leaves a zombie or a held port."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
