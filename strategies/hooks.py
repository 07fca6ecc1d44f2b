"""Flagger-style hooks as plan steps (issue #5): the gate steps named after the spec's
``webhooks.hooks`` go where Flagger calls them. Pure data, like the planners.

- confirm-rollout gates first;
- pre-rollout gates once the candidate is registered at 0% (a ``traffic(0)`` step is
  added first when the plan does not start with one) and before any traffic reaches it;
- confirm-promotion before the switch to 100% that precedes the promotion;
- confirm-traffic-increase before every other traffic increase.

post-rollout and rollback hooks are not steps: the engine polls ``rollback`` while it
waits, and rollout/gates.py tells ``post-rollout`` when the rollout has ended.
"""

from __future__ import annotations

from rollout.spec import HookSpec, RolloutSpec
from rollout.steps import GateStep, PromoteStep, Step, TrafficStep

PLAN_HOOKS = ("confirm-rollout", "pre-rollout", "confirm-traffic-increase", "confirm-promotion")


def step_for(hook: HookSpec) -> GateStep:
    """The gate step that calls ``hook`` (also used for the hooks that are not steps)."""
    return GateStep(
        name=hook.name, url=hook.url or "", url_env=hook.url_env, url_file=hook.url_file, builtin=hook.builtin,
        timeout_s=hook.timeout_s, retries=hook.retries, wait_s=hook.wait_s, metadata=dict(hook.metadata),
        hook=hook.type if hook.type in PLAN_HOOKS else "gate",  # type: ignore[arg-type]
    )


def _gates(spec: RolloutSpec, hook_type: str) -> list[Step]:
    return [step_for(h) for h in spec.webhooks.hooks if h.type == hook_type]


def _promoting_switch(steps: list[Step]) -> int | None:
    """Index of the last traffic(100) step before the promote step, if any."""
    promote = next((i for i, s in enumerate(steps) if isinstance(s, PromoteStep)), None)
    if promote is None:
        return None
    return next((i for i in range(promote - 1, -1, -1)
                 if isinstance(steps[i], TrafficStep) and steps[i].weight == 100), None)  # type: ignore[union-attr]


def with_hooks(spec: RolloutSpec, steps: list[Step]) -> list[Step]:
    if not any(h.type in PLAN_HOOKS for h in spec.webhooks.hooks):
        return steps
    out: list[Step] = _gates(spec, "confirm-rollout")
    rest = list(steps)
    pre = _gates(spec, "pre-rollout")
    if pre:
        first = rest[0] if rest else None
        if isinstance(first, TrafficStep) and first.weight == 0 and first.mirror == 0:
            out.append(rest.pop(0))
        else:
            out.append(TrafficStep(weight=0))
        out += pre
    switch = _promoting_switch(rest)
    weight = 0
    for i, step in enumerate(rest):
        if isinstance(step, TrafficStep):
            if i == switch:
                out += _gates(spec, "confirm-promotion")
            elif step.weight > weight:
                out += _gates(spec, "confirm-traffic-increase")
            weight = step.weight
        out.append(step)
    return out
