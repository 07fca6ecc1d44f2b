"""`promote`: the candidate becomes stable. The new stable is recorded (and saved)
before the data plane switches, so a resumed run finishes the switch."""

from __future__ import annotations

from rollout.engine.executors.base import Done
from rollout.engine.run import Run
from rollout.platforms.base import Traffic
from rollout.state import TrafficRecord
from rollout.steps import PromoteStep

PREVIOUS_LIMIT = 10


def execute(step: PromoteStep, run: Run) -> Done:
    r = run.rollout
    if not r.promoted:
        old = run.ms.stable
        run.ms.stable = r.candidate
        if old is not None and old.version != r.candidate.version:
            run.ms.previous = [old, *[p for p in run.ms.previous
                                      if p.version not in (old.version, r.candidate.version)]][:PREVIOUS_LIMIT]
        r.traffic = TrafficRecord(weight=100)
        r.promoted = True
        run.save()  # intent first
    r = run.rollout
    run.platform.set_traffic(Traffic(stable=r.candidate.version))
    old_version = r.stable.version if r.stable is not None else None
    return Done(f"{r.candidate.version} is now stable" + (f" (previous: {old_version})" if old_version else ""))
