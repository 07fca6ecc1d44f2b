"""Shadow: the candidate gets a copy of live traffic, its answers are discarded and
compared with stable's; then it is promoted by a switch, or retired."""

from __future__ import annotations

from rollout.spec import RolloutSpec, ShadowSpec
from rollout.steps import ScaleDownStep, Step, TrafficStep

from rollout.strategies.canary import analysis_step, promotion_tail


def plan(spec: RolloutSpec) -> list[Step]:
    strategy = spec.strategy
    assert isinstance(strategy, ShadowSpec)
    steps: list[Step] = [
        TrafficStep(weight=0, mirror=strategy.mirror_percent),
        analysis_step(spec, where="strategy (shadow)"),
    ]
    if strategy.on_success == "promote":
        return steps + [TrafficStep(weight=100, mirror=0)] + promotion_tail(strategy.scale_down_delay_s)
    return steps + [TrafficStep(weight=0, mirror=0), ScaleDownStep(version="candidate", after_s=0)]
