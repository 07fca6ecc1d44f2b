"""Canary: move traffic to the candidate in steps, measuring after each."""

from __future__ import annotations

from rollout.errors import SpecError
from rollout.spec import (
    AnalysisStep as AnalysisSpecStep,
    CanarySpec,
    GateStep as GateSpecStep,
    PauseStep as PauseSpecStep,
    RolloutSpec,
    SetWeightStep,
)
from rollout.steps import AnalysisStep, GateStep, PauseStep, PromoteStep, ScaleDownStep, Step, TrafficStep

DEFAULT_WEIGHTS = (20, 50)


def analysis_step(spec: RolloutSpec, names: list[str] | None = None, duration_s: float | None = None,
                  preview: bool = False, where: str = "strategy") -> AnalysisStep:
    """An analysis step over the named metrics (default: all), checked against the spec."""
    known = [m.name for m in spec.analysis.metrics]
    chosen = list(names) if names is not None else known
    if not chosen:
        raise SpecError(f"{where}: an analysis step needs metrics, but analysis.metrics is empty")
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SpecError(f"{where}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
    return AnalysisStep(
        metrics=tuple(chosen),
        duration_s=spec.analysis.duration_s if duration_s is None else duration_s,
        preview=preview,
    )


def promotion_tail(delay_s: float) -> list[Step]:
    """What every promoting plan ends with: the candidate becomes stable, the old one
    is kept for ``delay_s`` so a rollback needs no cold start."""
    return [PromoteStep(), ScaleDownStep(version="previous", after_s=delay_s)]


def plan(spec: RolloutSpec) -> list[Step]:
    strategy = spec.strategy
    assert isinstance(strategy, CanarySpec)
    has_metrics = bool(spec.analysis.metrics)
    steps: list[Step] = []
    if strategy.steps is None:
        for weight in strategy.weights or DEFAULT_WEIGHTS:
            steps.append(TrafficStep(weight=weight))
            if has_metrics and weight < 100:
                steps.append(analysis_step(spec))
    else:
        for i, item in enumerate(strategy.steps):
            where = f"strategy.steps.{i}"
            if isinstance(item, SetWeightStep):
                steps.append(TrafficStep(weight=item.set_weight))
            elif isinstance(item, PauseSpecStep):
                steps.append(PauseStep(seconds=item.pause.duration_s))
            elif isinstance(item, AnalysisSpecStep):
                steps.append(analysis_step(spec, item.analysis.metrics, item.analysis.duration_s, where=where))
            elif isinstance(item, GateSpecStep):
                steps.append(GateStep(name=f"step-{i}", url=item.gate.url, timeout_s=item.gate.timeout_s))
    weights = [s.weight for s in steps if isinstance(s, TrafficStep)]
    if not weights or weights[-1] != 100:
        steps.append(TrafficStep(weight=100))
    return steps + promotion_tail(strategy.scale_down_delay_s)
