"""The registry gate: a version's logged evaluation metrics, checked before any traffic
moves. ``evaluate`` is a pure function of the rules and the two versions' metrics;
``check`` is the engine's call: it records the decision as the rollout's first step (a
refusal ends the rollout as Rejected, exit 3, in the state and so in history and the job
summary); ``enforce`` raises ``RegistryGateRefused`` instead, for callers with no state.
Every failed rule is named: metric, both values and the margin.

A metric the candidate does not carry is reported missing, as is a stable value a
relative rule needs: missing is never a pass. With no stable version yet (the first
deployment) relative rules have nothing to compare against and are skipped, said so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollout.errors import RolloutError


class RegistryGateRefused(RolloutError):
    """The candidate's logged evaluation metrics fail the registry gate (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class GateCheck:
    """One rule on one metric: the values it compared (None: missing), the rule's name
    (min, max, max_decrease, max_increase) and limit, and the sentence saying so."""

    metric: str
    ok: bool
    detail: str
    rule: str = ""
    limit: float | None = None
    candidate: float | None = None
    stable: float | None = None
    checked: bool = True  # False: a relative rule with no stable version to compare against


@dataclass(frozen=True)
class GateDecision:
    checks: tuple[GateCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.ok]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def evaluate(rules: Mapping[str, Any], candidate: Mapping[str, float], stable: Mapping[str, float] | None,
             candidate_name: str = "candidate", stable_name: str = "stable") -> GateDecision:
    """Check each rule (an object with min, max, max_decrease, max_increase) on the
    candidate's metrics, relative rules against the stable's (None: no stable version)."""
    checks: list[GateCheck] = []
    for metric, rule in rules.items():
        value = candidate.get(metric)
        base_value = stable.get(metric) if stable is not None else None
        if value is None:
            checks.append(GateCheck(metric, False, f"{metric}: missing on {candidate_name} (no such logged metric; "
                                                   f"logged: {', '.join(sorted(candidate)) or 'none'})",
                                    rule=describe_rule(rule), stable=base_value))
            continue
        if rule.min is not None:
            ok = value >= rule.min
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} "
                                                f"{'>=' if ok else '<'} min {_fmt(rule.min)}",
                                    rule="min", limit=rule.min, candidate=value, stable=base_value))
        if rule.max is not None:
            ok = value <= rule.max
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} "
                                                f"{'<=' if ok else '>'} max {_fmt(rule.max)}",
                                    rule="max", limit=rule.max, candidate=value, stable=base_value))
        for margin, sign, word in ((rule.max_decrease, -1, "max_decrease"), (rule.max_increase, 1, "max_increase")):
            if margin is None:
                continue
            if stable is None:
                checks.append(GateCheck(metric, True, f"{metric}: {word} not checked: there is no stable version yet",
                                        rule=word, limit=margin, candidate=value, checked=False))
                continue
            base = stable.get(metric)
            if base is None:
                checks.append(GateCheck(metric, False, f"{metric}: missing on stable {stable_name}, so {word} "
                                                       f"{_fmt(margin)} cannot be checked ({candidate_name} "
                                                       f"{_fmt(value)})", rule=word, limit=margin, candidate=value))
                continue
            change = (value - base) * sign  # how far it moved in the bad direction
            ok = change <= margin + 1e-12
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} vs stable {stable_name} "
                                                f"{_fmt(base)} ({'-' if sign < 0 else '+'}{_fmt(max(change, 0.0))}; "
                                                f"{word} {_fmt(margin)})", rule=word, limit=margin, candidate=value,
                                    stable=base))
    return GateDecision(tuple(checks))


def describe_rule(rule: Any) -> str:
    """``min 0.9, max_decrease 0.01``: a rule as people read it."""
    return ", ".join(f"{word} {_fmt(getattr(rule, word))}" for word in ("min", "max", "max_decrease", "max_increase")
                     if getattr(rule, word, None) is not None)


def describe(rules: Mapping[str, Any]) -> str:
    """The gate as one step description: ``registry gate (accuracy max_decrease 0.01)``."""
    return "registry gate (" + "; ".join(f"{metric} {describe_rule(rule)}" for metric, rule in rules.items()) + ")"


def check(registry_spec: Any, candidate: Any, stable: Any | None) -> GateDecision | None:
    """The engine's call before any traffic moves: ``candidate`` a ModelVersion, ``stable``
    the stable VersionRecord (or None). None when the registry has no gate."""
    rules = getattr(registry_spec, "gate", None) or {}
    if not rules:
        return None
    stable_metrics = None if stable is None else dict(getattr(stable, "eval_metrics", None) or {})
    return evaluate(rules, candidate.eval_metrics, stable_metrics, candidate_name=candidate.version,
                    stable_name=stable.version if stable is not None else "-")


def refusal(candidate_ref: str, decision: GateDecision) -> str:
    """The sentence a refusal is recorded and reported with: every failed rule, with the
    metric, both values and the margin."""
    return (f"registry gate refused {candidate_ref} before any traffic moved: "
            + "; ".join(c.detail for c in decision.failures))


def enforce(registry_spec: Any, candidate: Any, stable: Any | None) -> GateDecision:
    """``check``, raising RegistryGateRefused on a refusal (for callers without a state to
    record it in; the engine records it as a Rejected rollout instead)."""
    decision = check(registry_spec, candidate, stable)
    if decision is None:
        return GateDecision(())
    if not decision.ok:
        raise RegistryGateRefused(refusal(candidate.ref, decision))
    return decision
