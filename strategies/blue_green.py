"""Blue-green: the candidate runs at full size with no live traffic, is judged on
preview traffic, then takes all traffic at once; the old version stays up for an
instant rollback."""

from __future__ import annotations

from rollout.spec import BlueGreenSpec, RolloutSpec
from rollout.steps import PauseStep, Step, TrafficStep

from rollout.strategies.canary import analysis_step, promotion_tail


def plan(spec: RolloutSpec) -> list[Step]:
    strategy = spec.strategy
    assert isinstance(strategy, BlueGreenSpec)
    has_metrics = bool(spec.analysis.metrics)
    steps: list[Step] = [TrafficStep(weight=0)]
    if strategy.preview_analysis and has_metrics:
        steps.append(analysis_step(spec, preview=True))
    if strategy.auto_promotion_s is None:
        steps.append(PauseStep(seconds=None))
    elif strategy.auto_promotion_s > 0:
        steps.append(PauseStep(seconds=strategy.auto_promotion_s))
    steps.append(TrafficStep(weight=100))
    if strategy.post_promotion_analysis and has_metrics:
        steps.append(analysis_step(spec))
    return steps + promotion_tail(strategy.scale_down_delay_s)
