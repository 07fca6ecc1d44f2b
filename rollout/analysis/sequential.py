"""The ``sequential`` judge: an anytime-valid test on counts, so a step can end as soon
as the evidence is enough, and looking often costs nothing.

The model is the one of Lindon & Malek, "Anytime-Valid Inference for Multinomial Count
Data" (NeurIPS 2022), for two arms. Requests are split at random, a share ``s`` to the
candidate. Each *bad* request (an error, or a request slower than a bound) then comes
from the candidate with probability

    theta = s * rho / (s * rho + 1 - s),   rho = candidate's bad rate / stable's bad rate,

so the arm labels of bad requests are i.i.d. Bernoulli(theta), whatever the traffic
rate does over time. ``rho <= 1 + min_relative_effect`` (the candidate is no worse
than tolerated) is ``theta <= theta0``. The test statistic is the Beta-mixture
likelihood ratio

    M = integral over theta in (theta0, 1) of L(theta) / L(theta0) dBeta(theta),

a non-negative supermartingale under the null, so by Ville's inequality it ever
reaches ``1 / alpha`` with probability at most ``alpha``: the false-rollback rate is
bounded by ``alpha`` however often the step measures. The mirror-image test (mixture
over ``theta < theta1`` against ``rho >= 1 + early_pass_effect``) passes a step early
with a bounded ``beta`` chance of passing a candidate that bad.

The same machinery on request counts is the sample-ratio-mismatch check: if the
candidate's share of requests is far from the configured split (``srm_alpha``), the
test above is not valid and the step is inconclusive instead.

Evidence continues across the analysis steps of a rollout: each step's statistic
starts at 1 and is a supermartingale under the same null (the weight changes theta0,
not rho), so the product of the steps' values is one too, and ``alpha`` bounds false
rollbacks over the *whole rollout* for this metric (each step records its value in
the measurement's ``detail["carry.log_e_fail"]``; the runner hands the sum back).
With several sequential metrics the bound is the sum of their alphas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, betaincc, betaln

from rollout.analysis.base import Decision, Measurement, QueryContext, Verdict
from rollout.spec import SequentialJudgeSpec

# Prior concentrations (a + b of the Beta mixtures). Small for the effect test, so a
# doubling of a small candidate share is inside the prior's bulk; large for SRM, which
# looks for gross mismatches on many more events.
EFFECT_PRIOR = 8.0
SRM_PRIOR = 50.0


def share_of(ctx: QueryContext) -> float | None:
    """The candidate's expected share of requests in this step, None if there is no split."""
    if 0 < ctx.weight < 100:
        return ctx.weight / 100.0
    if ctx.weight == 0 and ctx.mirror > 0:  # shadow: the candidate sees a copy of mirror% of stable's
        return ctx.mirror / (100.0 + ctx.mirror)
    return None


def theta(share: float, rho: float) -> float:
    return share * rho / (share * rho + 1.0 - share)


def _log(x):  # noqa: ANN001,ANN202 - floats or numpy arrays (the benchmark vectorises)
    with np.errstate(divide="ignore"):
        return np.log(x)


def log_e_greater(k: float, m: float, theta0: float, prior: float = EFFECT_PRIOR) -> float:
    """log of the mixture LR for theta > theta0, after k of m events fell in the candidate arm."""
    a, b = prior * theta0, prior * (1.0 - theta0)
    return (betaln(a + k, b + m - k) + _log(betaincc(a + k, b + m - k, theta0))
            - betaln(a, b) - _log(betaincc(a, b, theta0))
            - k * math.log(theta0) - (m - k) * math.log1p(-theta0))


def log_e_less(k: float, m: float, theta1: float, prior: float = EFFECT_PRIOR) -> float:
    """log of the mixture LR for theta < theta1 (the mirror image of ``log_e_greater``)."""
    a, b = prior * theta1, prior * (1.0 - theta1)
    return (betaln(a + k, b + m - k) + _log(betainc(a + k, b + m - k, theta1))
            - betaln(a, b) - _log(betainc(a, b, theta1))
            - k * math.log(theta1) - (m - k) * math.log1p(-theta1))


def log_e_srm(n_c: float, n_s: float, share: float, prior: float = SRM_PRIOR) -> float:
    """log of the two-sided Beta-mixture LR against "the candidate's share is ``share``"."""
    a, b = prior * share, prior * (1.0 - share)
    return betaln(a + n_c, b + n_s) - betaln(a, b) - n_c * math.log(share) - n_s * math.log1p(-share)


@dataclass(frozen=True)
class Evidence:
    share: float
    n_c: float
    n_s: float
    bad_c: float
    bad_s: float
    log_fail: float
    log_pass: float
    log_srm: float


def evidence(spec: SequentialJudgeSpec, share: float, n_c: float, bad_c: float, n_s: float, bad_s: float) -> Evidence:
    m = bad_c + bad_s
    log_fail = log_e_greater(bad_c, m, theta(share, 1.0 + spec.min_relative_effect)) if m > 0 else 0.0
    log_pass = (log_e_less(bad_c, m, theta(share, 1.0 + spec.early_pass_effect))
                if m > 0 and spec.early_pass_effect is not None else 0.0)
    log_srm = log_e_srm(n_c, n_s, share) if n_c + n_s > 0 else 0.0
    log_fail, log_pass, log_srm = float(log_fail), float(log_pass), float(log_srm)
    return Evidence(share, n_c, n_s, bad_c, bad_s, log_fail, log_pass, log_srm)


def _pct(x: float, n: float) -> str:
    return f"{x:.0f}/{n:.0f} ({100.0 * x / n:.3g}%)" if n > 0 else f"{x:.0f}/0"


class SequentialJudge:
    roles = ("candidate", "stable")

    def __init__(self, spec: SequentialJudgeSpec) -> None:
        self.spec = spec

    @staticmethod
    def _counts(m: Measurement) -> tuple[float, float] | None:
        d = m.detail
        if "requests" not in d:
            return None
        bad = d.get("bad", d.get("errors"))
        return (float(d["requests"]), float(bad)) if bad is not None else None

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        cand, stable = self._counts(measured["candidate"]), self._counts(measured["stable"])
        if cand is None or stable is None:
            return Decision(Verdict.INCONCLUSIVE, f"{name}: the sequential judge needs request and error counts; "
                                                  "use a counting query (error_rate, slow_ratio>Nms, ...)")
        share = share_of(ctx)
        if share is None:
            return Decision(Verdict.INCONCLUSIVE, f"{name}: no traffic split to test against (candidate weight "
                                                  f"{ctx.weight}%, mirror {ctx.mirror}%)")
        ev = evidence(self.spec, share, cand[0], cand[1], stable[0], stable[1])
        # This step's evidence, kept for the next steps (floored: JSON has no -inf, and
        # e^-50 against thresholds of e^3..e^7 changes nothing).
        step_fail, step_pass = max(ev.log_fail, -50.0), max(ev.log_pass, -50.0)
        keep = {"carry.log_e_fail": step_fail, "carry.log_e_pass": step_pass}
        log_fail = step_fail + ctx.carried.get("carry.log_e_fail", 0.0)
        log_pass = step_pass + ctx.carried.get("carry.log_e_pass", 0.0)
        text = (f"{name}: candidate {_pct(ev.bad_c, ev.n_c)} vs stable {_pct(ev.bad_s, ev.n_s)} "
                f"at a {100 * share:.3g}% split")
        fail_at, pass_at, srm_at = -math.log(self.spec.alpha), -math.log(self.spec.beta), -math.log(self.spec.srm_alpha)
        if ev.log_srm >= srm_at:
            actual = ev.n_c / (ev.n_c + ev.n_s)
            return Decision(Verdict.INCONCLUSIVE,
                            f"{text}: sample ratio mismatch - candidate got {100 * actual:.3g}% of requests, "
                            f"configured {100 * share:.3g}% (evidence {math.exp(min(ev.log_srm, 700)):.3g} >= "
                            f"{1 / self.spec.srm_alpha:.3g}); the comparison is not valid", detail=keep)
        e_fail = math.exp(min(log_fail, 700))
        if log_fail >= fail_at:
            tol = f" beyond the tolerated +{100 * self.spec.min_relative_effect:.3g}%" if self.spec.min_relative_effect else ""
            return Decision(Verdict.FAIL, f"{text}: candidate worse{tol} (evidence {e_fail:.3g} >= "
                                          f"{1 / self.spec.alpha:.3g} = 1/alpha)", final=True, detail=keep)
        if self.spec.early_pass_effect is not None and log_pass >= pass_at:
            return Decision(Verdict.PASS, f"{text}: a {100 * self.spec.early_pass_effect:.3g}% increase is ruled out "
                                          f"(evidence {math.exp(min(log_pass, 700)):.3g} >= {1 / self.spec.beta:.3g})",
                            final=True, detail=keep)
        return Decision(Verdict.PASS, f"{text}: no evidence of a regression so far (evidence {e_fail:.3g} of "
                                      f"{1 / self.spec.alpha:.3g} needed to fail)", detail=keep)
