"""`analysis(metrics, duration)`: one measurement per interval, saved as it is taken,
then judged. Pass moves on, Fail rolls back, Inconclusive pauses or fails by policy."""

from __future__ import annotations

from rollout.analysis.base import QueryContext, Verdict
from rollout.engine.executors.base import Done, Fail, Pause, Wait
from rollout.engine.run import Run
from rollout.state import MeasurementRecord
from rollout.steps import AnalysisStep

_VERDICTS = {"passed": ("pass",), "failed": ("fail",), "inconclusive": ("inconclusive", "error")}


def deciding(run: Run, step: AnalysisStep, outcome: str) -> tuple[MeasurementRecord, ...]:
    """The measurements that decided a step: per metric that may decide (not dry_run),
    its last record with the outcome's verdict in this step (its last record otherwise)."""
    r = run.rollout
    metrics = {m.name: m for m in run.spec.analysis.metrics}
    started = r.step_started_at or 0.0
    records = [m for m in r.step_measurements() if m.at >= started]
    out = []
    for name in step.metrics:
        if name not in metrics or metrics[name].dry_run:
            continue
        mine = [m for m in records if m.metric == name]
        matching = [m for m in mine if m.verdict in _VERDICTS.get(outcome, ())]
        if matching:
            out.append(matching[-1])
        elif mine and outcome == "passed":
            out.append(mine[-1])
    return tuple(out)


def execute(step: AnalysisStep, run: Run) -> Done | Wait | Pause | Fail:
    r = run.rollout
    assert r.step_started_at is not None
    spec = run.spec
    runner = run.runner()
    started = r.step_started_at
    deadline = started + step.duration_s
    records = [m for m in r.step_measurements() if m.at >= started]
    ticks = len({m.tick for m in records})
    next_at = min(started + (ticks + 1) * spec.analysis.interval_s, deadline)
    now = run.now()
    if now < next_at:
        return Wait(next_at)
    ctx = QueryContext(
        model=run.model, version=r.candidate.version, stable=r.stable.version if r.stable else None,
        candidate=r.candidate.version, namespace=getattr(spec.platform, "namespace", "default"),
        window_s=max(now - started, 1.0), weight=r.traffic.weight, mirror=r.traffic.mirror, preview=step.preview,
    )
    fresh = runner.measure(step.metrics, ctx, r.step_index, ticks, now, history=r.measurements)
    r.measurements.extend(fresh)
    for m in fresh:
        shown = "-" if m.value is None else f"{m.value:.4g}"
        run.emit("measurement", f"{m.metric} [{m.version}] = {shown}: {m.verdict}"
                                + (" (dry run)" if m.dry_run else "") + f" - {m.reason}", r.step_index)
    run.save()
    r = run.rollout
    verdict = runner.evaluate(step.metrics, records + fresh, at_deadline=now >= deadline)
    if verdict is None:
        return Wait(min(started + (ticks + 2) * spec.analysis.interval_s, deadline))
    where = f"at step {r.step_index + 1}"
    if verdict.verdict is Verdict.PASS:
        return Done(f"analysis passed {where}: {verdict.reason}", deciding(run, step, "passed"))
    if verdict.verdict is Verdict.FAIL:
        return Fail(f"analysis failed {where}: {verdict.reason}", "failed", deciding(run, step, "failed"))
    if spec.analysis.inconclusive == "fail":
        return Fail(f"analysis inconclusive {where} (policy: fail): {verdict.reason}", "inconclusive",
                    deciding(run, step, "inconclusive"))
    return Pause(f"analysis inconclusive {where}: {verdict.reason}; rerun `rollout start` to measure again, "
                 f"`rollout promote {run.model}:{r.candidate.version}` to accept, or `rollout abort {run.model}`",
                 "inconclusive", deciding(run, step, "inconclusive"))
