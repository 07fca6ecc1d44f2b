"""The registry gate: a version's logged evaluation metrics, checked before any traffic
moves. ``evaluate`` is a pure function of the rules and the two versions' metrics;
``enforce`` raises ``RegistryGateRefused`` (exit 3: the candidate was rejected, nothing
moved) with every failed rule named: metric, both values and the margin.

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
    metric: str
    ok: bool
    detail: str


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
        if value is None:
            checks.append(GateCheck(metric, False, f"{metric}: missing on {candidate_name} (no such logged metric; "
                                                   f"logged: {', '.join(sorted(candidate)) or 'none'})"))
            continue
        if rule.min is not None:
            ok = value >= rule.min
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} "
                                                f"{'>=' if ok else '<'} min {_fmt(rule.min)}"))
        if rule.max is not None:
            ok = value <= rule.max
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} "
                                                f"{'<=' if ok else '>'} max {_fmt(rule.max)}"))
        for margin, sign, word in ((rule.max_decrease, -1, "max_decrease"), (rule.max_increase, 1, "max_increase")):
            if margin is None:
                continue
            if stable is None:
                checks.append(GateCheck(metric, True, f"{metric}: {word} not checked: there is no stable version yet"))
                continue
            base = stable.get(metric)
            if base is None:
                checks.append(GateCheck(metric, False, f"{metric}: missing on stable {stable_name}, so {word} "
                                                       f"{_fmt(margin)} cannot be checked ({candidate_name} "
                                                       f"{_fmt(value)})"))
                continue
            change = (value - base) * sign  # how far it moved in the bad direction
            ok = change <= margin + 1e-12
            checks.append(GateCheck(metric, ok, f"{metric}: {candidate_name} {_fmt(value)} vs stable {stable_name} "
                                                f"{_fmt(base)} ({'-' if sign < 0 else '+'}{_fmt(max(change, 0.0))}; "
                                                f"{word} {_fmt(margin)})"))
    return GateDecision(tuple(checks))


def enforce(registry_spec: Any, candidate: Any, stable: Any | None) -> GateDecision:
    """The engine's call before any traffic moves: ``candidate`` a ModelVersion,
    ``stable`` the stable VersionRecord (or None). Raises RegistryGateRefused."""
    rules = getattr(registry_spec, "gate", None) or {}
    if not rules:
        return GateDecision(())
    stable_metrics = None if stable is None else dict(getattr(stable, "eval_metrics", None) or {})
    decision = evaluate(rules, candidate.eval_metrics, stable_metrics, candidate_name=candidate.version,
                        stable_name=stable.version if stable is not None else "-")
    if not decision.ok:
        raise RegistryGateRefused(f"registry gate refused {candidate.ref} before any traffic moved: "
                                  + "; ".join(c.detail for c in decision.failures))
    return decision
