"""`traffic(weight, mirror)`: record the split, save, then apply it (never the other way
round: a split the state does not know of could not be undone by a resumed run)."""

from __future__ import annotations

from rollout.engine.executors.base import Done
from rollout.engine.run import Run
from rollout.platforms.base import Traffic
from rollout.state import TrafficRecord
from rollout.steps import TrafficStep


def execute(step: TrafficStep, run: Run) -> Done:
    r = run.rollout
    assert r.stable is not None, "a traffic step needs a stable version"
    if (r.traffic.weight, r.traffic.mirror) != (step.weight, step.mirror):
        r.traffic = TrafficRecord(weight=step.weight, mirror=step.mirror)
        run.save()  # intent first
    r = run.rollout
    assert r.stable is not None
    run.platform.set_traffic(Traffic(stable=r.stable.version, candidate=r.candidate.version,
                                     weight=step.weight, mirror=step.mirror))
    return Done(f"{r.candidate.version} at {step.weight}%" + (f", mirror {step.mirror}%" if step.mirror else "")
                + f"; {r.stable.version} at {100 - step.weight}%")
