"""`scale_down(version, after)`: retire a version now, or record when to (the old stable
is kept warm for a while so a rollback is instant). Cleanup never fails a rollout."""

from __future__ import annotations

from rollout.engine.executors.base import Done
from rollout.engine.run import Run
from rollout.state import Retirement
from rollout.steps import ScaleDownStep


def execute(step: ScaleDownStep, run: Run) -> Done:
    r = run.rollout
    target = r.candidate if step.version == "candidate" else r.stable
    if target is None:
        return Done("nothing to scale down")
    if step.after_s <= 0:
        try:
            run.platform.retire(target.version)
        except Exception as exc:  # cleanup must never turn a finished rollout into a rolled-back one
            run.emit("warning", f"could not retire {target.version}: {exc}", r.step_index)
            return Done(f"could not retire {target.version}: {exc}")
        return Done(f"{target.version} retired")
    due = run.now() + step.after_s
    run.ms.retirements = [x for x in run.ms.retirements if x.version != target.version]
    run.ms.retirements.append(Retirement(version=target.version, due_at=due))
    return Done(f"{target.version} kept running for {step.after_s:g}s so a rollback is instant")
