"""Strategies turn a spec into a plan (a list of steps). They are pure functions of the
spec: no I/O, no clock, so a plan can be printed, stored and tested as data."""

from __future__ import annotations

from collections.abc import Callable

from rollout.errors import SpecError
from rollout.spec import RolloutSpec
from rollout.steps import Step

from rollout.strategies import blue_green, canary, shadow
from rollout.strategies.hooks import with_hooks

PLANNERS: dict[str, Callable[[RolloutSpec], list[Step]]] = {
    "canary": canary.plan,
    "blue_green": blue_green.plan,
    "shadow": shadow.plan,
}


def plan(spec: RolloutSpec) -> list[Step]:
    try:
        planner = PLANNERS[spec.strategy.type]
    except KeyError:  # pragma: no cover - the spec's discriminator already rejects this
        raise SpecError(f"unknown strategy {spec.strategy.type!r}; known: {', '.join(sorted(PLANNERS))}") from None
    return with_hooks(spec, planner(spec))  # webhooks as gate steps (issue #5, strategies/hooks.py)
