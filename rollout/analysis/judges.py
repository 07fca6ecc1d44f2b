"""Judges: turn measured values into pass / fail / inconclusive, with the reason in words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rollout.analysis.base import Decision, Judge, Measurement, QueryContext, Verdict
from rollout.errors import SpecError
from rollout.spec import AgreementJudgeSpec, CompareJudgeSpec, ThresholdJudgeSpec


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def too_few_requests(name: str, measured: Mapping[str, Measurement], roles: tuple[str, ...],
                     min_requests: int) -> Decision | None:
    """"Not enough data" when a version served fewer than ``min_requests`` in the window.
    Measurements without a request count (a raw PromQL value) are not checked."""
    if min_requests <= 0:
        return None
    short = [f"{role} {measured[role].detail['requests']:.0f}" for role in roles
             if "requests" in measured[role].detail and measured[role].detail["requests"] < min_requests]
    if not short:
        return None
    return Decision(Verdict.INCONCLUSIVE, f"{name}: not enough data - {', '.join(short)} request(s) in the window, "
                                          f"fewer than min_requests {min_requests}",
                    detail={"not_enough_data": 1.0})


class ThresholdJudge:
    def __init__(self, spec: ThresholdJudgeSpec, role: str = "candidate") -> None:
        self.spec = spec
        self.roles = (role,)

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        value = measured[self.roles[0]].value
        assert value is not None
        short = too_few_requests(name, measured, self.roles, self.spec.min_requests)
        if short:
            return short
        if self.spec.max is not None and value > self.spec.max:
            return Decision(Verdict.FAIL, f"{name} {_fmt(value)} > max {_fmt(self.spec.max)}")
        if self.spec.min is not None and value < self.spec.min:
            return Decision(Verdict.FAIL, f"{name} {_fmt(value)} < min {_fmt(self.spec.min)}")
        bounds = [f"min {_fmt(self.spec.min)}" if self.spec.min is not None else "",
                  f"max {_fmt(self.spec.max)}" if self.spec.max is not None else ""]
        return Decision(Verdict.PASS, f"{name} {_fmt(value)} within {' '.join(b for b in bounds if b)}")


class CompareJudge:
    """Candidate against stable on the same metric, measured over the same window."""

    roles = ("candidate", "stable")

    def __init__(self, spec: CompareJudgeSpec) -> None:
        self.spec = spec

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        cand, stable = measured["candidate"].value, measured["stable"].value
        assert cand is not None and stable is not None
        short = too_few_requests(name, measured, self.roles, self.spec.min_requests)
        if short:
            return short
        # "Worse" is an increase, or a decrease for higher-is-better metrics.
        worse_by = (stable - cand) if self.spec.higher_is_better else (cand - stable)
        allowed = []
        if self.spec.max_absolute_increase is not None:
            allowed.append(self.spec.max_absolute_increase)
        if self.spec.max_relative_increase is not None:
            allowed.append(abs(stable) * self.spec.max_relative_increase)
        limit = max(allowed)
        text = f"{name} candidate {_fmt(cand)} vs stable {_fmt(stable)}"
        if worse_by > limit:
            return Decision(Verdict.FAIL, f"{text}: worse by {_fmt(worse_by)} > allowed {_fmt(limit)}")
        return Decision(Verdict.PASS, f"{text}: within allowed {_fmt(limit)}")


class AgreementJudge:
    """Shadow: share of mirrored requests whose outputs matched stable's."""

    roles = ("candidate",)

    def __init__(self, spec: AgreementJudgeSpec) -> None:
        self.spec = spec

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        value = measured["candidate"].value
        assert value is not None
        if value < self.spec.min:
            return Decision(Verdict.FAIL, f"{name} {_fmt(value)} < min {_fmt(self.spec.min)}")
        return Decision(Verdict.PASS, f"{name} {_fmt(value)} >= min {_fmt(self.spec.min)}")


JUDGES: dict[str, Callable[[Any, str], Judge]] = {
    "threshold": lambda spec, role: ThresholdJudge(spec, role),
    "compare": lambda spec, role: CompareJudge(spec),
    "agreement": lambda spec, role: AgreementJudge(spec),
    "sequential": lambda spec, role: _sequential(spec),
}


def _sequential(spec: Any) -> Judge:
    from rollout.analysis.sequential import SequentialJudge  # scipy is imported only when used

    return SequentialJudge(spec)


def make_judge(spec: Any, role: str = "candidate") -> Judge:
    try:
        factory = JUDGES[spec.type]
    except KeyError:
        raise SpecError(f"judge {spec.type!r} is not available; known: {', '.join(sorted(JUDGES))}") from None
    return factory(spec, role)
