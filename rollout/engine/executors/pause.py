"""`pause(seconds | None)`: wait for a time, or until `rollout promote`."""

from __future__ import annotations

from rollout.engine.executors.base import Done, Pause, Wait
from rollout.engine.run import Run
from rollout.steps import PauseStep


def execute(step: PauseStep, run: Run) -> Done | Wait | Pause:
    r = run.rollout
    assert r.step_started_at is not None
    if step.seconds is None:
        return Pause(f"waiting for `rollout promote {run.model}:{r.candidate.version}`")
    until = r.step_started_at + step.seconds
    return Wait(until) if run.now() < until else Done(f"paused {step.seconds:g}s")
