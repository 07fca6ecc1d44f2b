"""One executor per step type, keyed by the step's ``kind``. Adding a step type is one
module here, one line in ``EXECUTORS`` and its class in rollout/steps.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rollout.engine.executors import analysis, gate, pause, promote, scale_down, traffic
from rollout.engine.executors.base import Done, Fail, Outcome, Pause, Wait
from rollout.engine.run import Run

EXECUTORS: dict[str, Callable[[Any, Run], Outcome]] = {
    "traffic": traffic.execute,
    "pause": pause.execute,
    "analysis": analysis.execute,
    "gate": gate.execute,
    "promote": promote.execute,
    "scale_down": scale_down.execute,
}

__all__ = ["EXECUTORS", "Done", "Fail", "Outcome", "Pause", "Wait"]
