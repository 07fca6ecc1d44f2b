"""`gate(webhook)`: ask a URL; 2xx passes. Semantics in rollout/gates.py: pre-rollout
refusing rolls back; a plain gate and the confirm-* hooks are asked again every analysis
interval for ``wait_s`` (None: until they pass), then the rollout pauses."""

from __future__ import annotations

from rollout.engine.executors.base import Done, Fail, Pause, Wait
from rollout.engine.run import Run
from rollout.gates import payload as hook_payload
from rollout.steps import GateStep


def execute(step: GateStep, run: Run) -> Done | Wait | Pause | Fail:
    r = run.rollout
    assert r.step_started_at is not None
    memo = run.memo
    now = run.now()
    asked_at = memo.gate_next_at.get(r.step_index)
    if asked_at is not None and now < asked_at:
        return Wait(asked_at)
    first_ask = asked_at is None
    result = run.s.gate(step, hook_payload(run.model, r, step.name, step.hook, step.metadata))
    if result.ok:
        memo.gate_next_at.pop(r.step_index, None)
        return Done(f"gate {step.name} passed ({result.detail})")
    if step.hook == "pre-rollout":
        return Fail(f"pre-rollout gate {step.name} answered {result.detail} at step {r.step_index + 1}")
    interval = run.spec.analysis.interval_s
    if step.wait_s is not None and now - r.step_started_at >= step.wait_s:
        memo.gate_next_at.pop(r.step_index, None)
        return Pause(f"gate {step.name} answered {result.detail}; rerun `rollout start` to ask again or "
                     f"`rollout promote {run.model}:{r.candidate.version}` to pass it")
    wait = interval if step.wait_s is None else min(interval, max(0.0, r.step_started_at + step.wait_s - now))
    memo.gate_next_at[r.step_index] = now + wait
    if first_ask:
        run.emit("waiting", f"gate {step.name} answered {result.detail}; asking again every {interval:g}s"
                            + ("" if step.wait_s is None else f" for up to {step.wait_s:g}s")
                            + f" (`rollout promote {run.model}:{r.candidate.version}` passes it)", r.step_index)
    return Wait(now + wait)
