"""The ``sequential`` judge: an anytime-valid test on bad-request counts, so a step can
end as soon as the evidence is enough, and looking often costs nothing.

What it tests. Let ``rho`` be the candidate's bad-request rate over stable's (a bad
request is an error, or one slower than a histogram bucket). The null hypothesis is
``rho <= rho0 = 1 + min_relative_effect``; rejecting it rolls back.

Units (``unit``):

- ``requests`` (default). In each measurement interval ``i`` the judge sees the requests
  each version actually served, ``n_c`` and ``n_s``, and their bad requests ``x_c`` and
  ``x_s``. If bad requests are independent given each version's rate (Poisson-like),
  then given ``m = x_c + x_s`` the candidate's share is Binomial(m, theta_i) with
  ``theta_i = n_c rho / (n_c rho + n_s)``: the *observed* exposure, so the test is valid
  for any split (configured weight, replica ratio, sticky clients, drift). The e-value
  is a mixture, over a fixed grid of alternatives ``rho_g > rho0``, of the products of
  binomial likelihood ratios; under the null each is a non-negative supermartingale
  (the binomial family has monotone likelihood ratio), so by Ville's inequality the
  mixture ever reaches ``1 / alpha`` with probability at most ``alpha``.
- ``buckets``. Each measurement interval is one unit: ``D_i = r_c - rho0 * r_s``, the
  difference of the two versions' bad-request *rates* in the interval, bounded in
  ``[-rho0, 1]``, has conditional mean <= 0 under the null whatever the dependence
  between requests inside the interval (bursts, a failing pod). The e-value is a
  mixture over fixed bets of ``prod(1 + lambda * D_i)`` (a betting e-process,
  Waudby-Smith & Ramdas 2023). It assumes only that intervals are independent given
  the past; it pays for that in power (see bench/results/detection.md).

Across steps. Pass evidence is never carried: each step earns its own early pass.
Failure evidence is carried as an average over *restart points*: the process that
starts at analysis step ``k`` is the product of the step e-values from ``k`` on; the
judge tests ``sum_k w_k * prod_{j>=k} e_j`` (``w_1 = 0.8``, ``w_k = 0.2/((k-1)k)``),
an average of test supermartingales and so one itself. A step that favoured the
candidate (a stable-only incident) cannot mask a later regression: the restart at
the next step starts from 1. One number carries it (``carry.log_a``).

Early pass. The mirror-image test (alternatives below ``rho1 = 1 + early_pass_effect``)
passes a step early, wrongly with probability at most ``beta``.

Never a pass by default. When a step reaches its deadline without failing, it passes
only if its traffic gave the test ``power`` to detect ``detectable_effect``; the
smallest effect it could have detected is in every measurement's reason and detail.
Otherwise it is inconclusive.

Warm-up. In the rollout's first analysis step the first ``warmup_s`` seconds are not
judged (cold pods); their counts are reported in the detail.

Sample ratio. If the candidate's share of requests is far from the configured split
(a Beta-mixture test at ``srm_alpha``), the reason says so. It is a diagnostic: the
test uses observed exposure and stays valid.

Every quantity is computed in log space (``logsumexp``, ``log1p``): no ``-inf``, no floors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, ndtr

from rollout.analysis.base import Decision, Measurement, QueryContext, Verdict
from rollout.spec import SequentialJudgeSpec

# Alternatives of the failure test, as multiples of rho0, and their prior weights.
FAIL_GRID = np.array([1.2, 1.5, 2.0, 3.0, 5.0, 10.0])
FAIL_WEIGHTS = np.array([0.15, 0.2, 0.25, 0.2, 0.15, 0.05])
# Alternatives of the early-pass test, as divisors of rho1.
PASS_GRID = np.array([1.25, 1.5, 2.0, 3.0, 5.0])
PASS_WEIGHTS = np.full(5, 0.2)
# Bets of the bucket test (lambda * bound).
BETS = np.array([0.9, 0.5, 0.25, 0.1, 0.05])
BET_WEIGHTS = np.full(5, 0.2)
# Cap of the bucket test's clipped rates, in multiples of the pooled bad-request rate so far.
CAP = 4.0
# Restart weights: w_1 = 1 - LATE, w_k = LATE / ((k - 1) k) for k >= 2 (they sum to 1).
LATE = 0.2
SRM_PRIOR = 50.0
# Relative effects (rho / rho0) the detectable-effect search tries.
EFFECT_SEARCH = np.geomspace(1.01, 100.0, 240)


def logsumexp(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """log(sum(exp(x))) without overflow or underflow (scipy's adds array-API overhead the
    judge, called every interval, does not need)."""
    x = np.asarray(x, dtype=float)
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out.item() if axis is None else np.squeeze(out, axis=axis)


def restart_weight(k: int) -> float:
    return 1.0 - LATE if k == 1 else LATE / ((k - 1) * k)


def share_of(ctx: QueryContext) -> float | None:
    """The candidate's configured share of requests in this step, None if there is no split."""
    if 0 < ctx.weight < 100:
        return ctx.weight / 100.0
    if ctx.weight == 0 and ctx.mirror > 0:  # shadow: the candidate sees a copy of mirror% of stable's
        return ctx.mirror / (100.0 + ctx.mirror)
    return None


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Intervals:
    """Per-interval counts of one step (after warm-up): arrays of equal length."""

    n_c: np.ndarray
    x_c: np.ndarray
    n_s: np.ndarray
    x_s: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[tuple[float, float, float, float]]) -> "Intervals":
        a = np.asarray(rows, dtype=float).reshape(-1, 4)
        return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3])

    def informative(self) -> "Intervals":
        """Intervals where both versions served requests (the others say nothing about rho)."""
        keep = (self.n_c > 0) & (self.n_s > 0)
        return Intervals(self.n_c[keep], self.x_c[keep], self.n_s[keep], self.x_s[keep])


def intervals_from_cumulative(points: Sequence[tuple[float, float, float, float]],
                              base: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> Intervals:
    """Counts per interval from counts cumulated since the step began (``points`` in time
    order, ``base`` the counts already excluded). A counter that went down (a restart
    the provider did not correct) contributes nothing rather than a negative count."""
    prev = np.asarray(base, dtype=float)
    rows = []
    for p in points:
        cur = np.asarray(p, dtype=float)
        rows.append(np.maximum(cur - prev, 0.0))
        prev = np.maximum(cur, prev)
    return Intervals.of(rows) if rows else Intervals.of(np.zeros((0, 4)))


# ---------------------------------------------------------------------------- statistics


def _theta(n_c: np.ndarray, n_s: np.ndarray, rho: np.ndarray | float) -> np.ndarray:
    return n_c * rho / (n_c * rho + n_s)


def _log_lr_counts(iv: Intervals, rho_alt: np.ndarray, rho_null: float) -> np.ndarray:
    """log prod_i Binomial LR of rho_alt (a vector) against rho_null, one value per alternative.
    Written with log ratios of (n_c rho + n_s) so nothing underflows: for the candidate's
    share, log(theta_a/theta_0) = log(rho_a/rho_0) - log((n_c rho_a + n_s)/(n_c rho_0 + n_s))."""
    rho_alt = np.asarray(rho_alt, dtype=float)[:, None]
    den_a = np.log(iv.n_c * rho_alt + iv.n_s)
    den_0 = np.log(iv.n_c * rho_null + iv.n_s)
    log_c = np.log(rho_alt / rho_null) - (den_a - den_0)  # candidate's share
    log_s = -(den_a - den_0)  # stable's share
    return (iv.x_c * log_c + iv.x_s * log_s).sum(axis=1)


def log_e_counts_greater(iv: Intervals, rho0: float) -> float:
    """log of the mixture e-value against rho <= rho0 (requests as units)."""
    iv = iv.informative()
    if iv.n_c.size == 0:
        return 0.0
    return float(logsumexp(np.log(FAIL_WEIGHTS) + _log_lr_counts(iv, rho0 * FAIL_GRID, rho0)))


def log_e_counts_less(iv: Intervals, rho1: float) -> float:
    """log of the mixture e-value against rho >= rho1."""
    iv = iv.informative()
    if iv.n_c.size == 0:
        return 0.0
    return float(logsumexp(np.log(PASS_WEIGHTS) + _log_lr_counts(iv, rho1 / PASS_GRID, rho1)))


def _rates(iv: Intervals) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bad-request rates per informative interval, and the predictable cap of each: CAP times
    the pooled rate of the intervals before it (with a 1% prior worth 100 requests)."""
    iv = iv.informative()
    bad = np.concatenate([[0.0], np.cumsum(iv.x_c + iv.x_s)[:-1]])
    req = np.concatenate([[0.0], np.cumsum(iv.n_c + iv.n_s)[:-1]])
    cap = np.minimum(1.0, CAP * (bad + 1.0) / (req + 100.0))
    return np.clip(iv.x_c / iv.n_c, 0, 1), np.clip(iv.x_s / iv.n_s, 0, 1), cap


def bucket_differences(iv: Intervals, rho0: float) -> tuple[np.ndarray, np.ndarray]:
    """(D_i, the largest safe bet scale 1/|lower bound of D_i|) per interval.

    Where the candidate served no more requests than stable, both rates are clipped at the
    cap: min(r_c, c) - rho0 * min(r_s, c), in [-rho0 c, c]. Its mean is <= 0 under the
    null when the candidate's interval rate is at least as spread as stable's (fewer
    requests, fewer pods: clipping then lowers the candidate's mean more), which lets the
    bets be 1/(rho0 c) instead of 1/rho0. Elsewhere the plain difference r_c - rho0 r_s."""
    r_c, r_s, cap = _rates(iv)
    iv = iv.informative()
    clip = iv.n_c <= iv.n_s
    d = np.where(clip, np.minimum(r_c, cap) - rho0 * np.minimum(r_s, cap), r_c - rho0 * r_s)
    scale = np.where(clip, 1.0 / (rho0 * cap), 1.0 / rho0)
    return d, scale


def log_e_buckets_greater(iv: Intervals, rho0: float) -> float:
    """log of the betting e-value against E[D_i | past] <= 0 (intervals as units)."""
    d, scale = bucket_differences(iv, rho0)
    if d.size == 0:
        return 0.0
    lam = BETS[:, None] * scale[None, :]
    return float(logsumexp(np.log(BET_WEIGHTS) + np.log1p(lam * d).sum(axis=1)))


def log_e_buckets_less(iv: Intervals, rho1: float) -> float:
    """log of the betting e-value against E[rho1 r_s - r_c] <= 0 (unclipped: clipping a worse,
    more spread candidate would favour passing it)."""
    r_c, r_s, _ = _rates(iv)
    if r_c.size == 0:
        return 0.0
    d = rho1 * r_s - r_c  # in [-1, rho1]
    lam = BETS[:, None]
    return float(logsumexp(np.log(BET_WEIGHTS) + np.log1p(lam * d).sum(axis=1)))


def log_e_srm(n_c: float, n_s: float, share: float, prior: float = SRM_PRIOR) -> float:
    """log of the two-sided Beta-mixture LR against "the candidate's share is ``share``"."""
    a, b = prior * share, prior * (1.0 - share)
    return float(betaln(a + n_c, b + n_s) - betaln(a, b) - n_c * math.log(share) - n_s * math.log1p(-share))


def combined_log_e(log_e_step: float, log_carry: float | None, step_number: int) -> tuple[float, float]:
    """(log of the restart-average e-value now, log of what to carry if the step ended now).

    ``log_carry`` is log A, A = sum over earlier restarts k of w_k * prod of their step e-values
    (None in the first analysis step)."""
    log_w = math.log(restart_weight(step_number))
    log_a_plus_w = log_w if log_carry is None else float(np.logaddexp(log_carry, log_w))
    carry = log_a_plus_w + log_e_step
    not_started = 1.0 - sum(restart_weight(k) for k in range(1, step_number + 1))
    now = carry if not_started <= 0 else float(np.logaddexp(carry, math.log(not_started)))
    return now, carry


def detection_power_counts(iv: Intervals, rho0: float, rho: np.ndarray, log_threshold: float) -> np.ndarray:
    """Approximate probability, for each candidate effect in ``rho`` (a vector), that the
    failure test on this step's exposures would have crossed ``log_threshold`` (normal
    approximation of the log-likelihood ratio at each grid point, the bad-request totals
    taken as observed)."""
    iv = iv.informative()
    rho = np.atleast_1d(np.asarray(rho, dtype=float))
    m = iv.x_c + iv.x_s
    if m.sum() <= 0:
        return np.zeros_like(rho)
    th = _theta(iv.n_c[None, None, :], iv.n_s[None, None, :], rho[:, None, None])  # (effects, 1, intervals)
    rho_a = (rho0 * FAIL_GRID)[None, :, None]
    den = np.log(iv.n_c * rho_a + iv.n_s) - np.log(iv.n_c * rho0 + iv.n_s)  # (1, grid, intervals)
    a, b = np.log(FAIL_GRID)[None, :, None] - den, -den
    mu = (m * (th * a + (1 - th) * b)).sum(axis=2)
    var = (m * th * (1 - th) * (a - b) ** 2).sum(axis=2)
    need = log_threshold - np.log(FAIL_WEIGHTS)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (mu - need) / np.sqrt(np.where(var > 0, var, 1.0)), -np.inf)
    return ndtr(z).max(axis=1)


def detection_power_buckets(iv: Intervals, rho0: float, rho: np.ndarray, log_threshold: float) -> np.ndarray:
    """The same for the bucket test: log growth of each bet ~ lambda*sum(D) - lambda^2*sum(D^2)/2,
    with D's spread taken from the step's own intervals (at least its binomial part) and the
    bets scaled as the test scales them."""
    rho = np.atleast_1d(np.asarray(rho, dtype=float))
    d, scale = bucket_differences(iv, rho0)
    iv = iv.informative()
    k = d.size
    if k < 2:
        return np.zeros_like(rho)
    p = max(iv.x_s.sum() / iv.n_s.sum(), 0.0)
    binom = (p / iv.n_c + rho0 ** 2 * p / iv.n_s).sum()
    var = max(float(((d - d.mean()) ** 2).sum()), float(binom))
    lam_scale = float(np.median(scale))
    shift = (p * (rho - rho0) * k)[:, None]
    bets = (BETS * lam_scale)[None, :]
    mu = bets * shift - bets ** 2 * (var + shift ** 2 / k) / 2
    z = (mu - (log_threshold - np.log(BET_WEIGHTS)[None, :])) / (bets * math.sqrt(var))
    return ndtr(z).max(axis=1)


def smallest_detectable(iv: Intervals, rho0: float, log_threshold: float, power: float, unit: str) -> float | None:
    """The smallest rho (candidate bad rate over stable's) the step's traffic detects with
    probability ``power``; None if even a hundredfold increase would not be."""
    fn = detection_power_counts if unit == "requests" else detection_power_buckets
    coarse = EFFECT_SEARCH[::10]
    ok = np.flatnonzero(fn(iv, rho0, rho0 * coarse, log_threshold) >= power)
    if not ok.size:
        return None
    hi = int(ok[0]) * 10  # power grows with rho: refine between the coarse neighbours
    fine = EFFECT_SEARCH[max(0, hi - 9):hi + 1]
    ok = np.flatnonzero(fn(iv, rho0, rho0 * fine, log_threshold) >= power)
    return float(rho0 * fine[ok[0]]) if ok.size else float(rho0 * EFFECT_SEARCH[hi])


# ---------------------------------------------------------------------------- the judge


def _pct(x: float, n: float) -> str:
    return f"{x:.0f}/{n:.0f} ({100.0 * x / n:.3g}%)" if n > 0 else f"{x:.0f}/0"


def _counts(m: Measurement) -> tuple[float, float] | None:
    d = m.detail
    if "requests" not in d:
        return None
    bad = d.get("bad", d.get("errors"))
    return (float(d["requests"]), float(bad)) if bad is not None else None


@dataclass(frozen=True)
class StepData:
    """What the judge reads of the step so far."""

    intervals: Intervals
    warmup: tuple[float, float, float, float]  # counts excluded as warm-up
    warming_up: bool


def step_data(points: Sequence[tuple[float, tuple[float, float, float, float]]], warmup_s: float) -> StepData:
    """``points``: (seconds since the step began, cumulative counts n_c, x_c, n_s, x_s) in time order."""
    base = (0.0, 0.0, 0.0, 0.0)
    judged = list(points)
    if warmup_s > 0:
        # The counts up to the last measurement within the warm-up are excluded; if the
        # first measurement came after it, that first measurement's counts are.
        before = [p for p in points if p[0] <= warmup_s + 1e-9] or list(points[:1])
        if before:
            base = before[-1][1]
        judged = [p for p in points if p[0] > before[-1][0]] if before else []
        if not judged:
            return StepData(Intervals.of(np.zeros((0, 4))), base, True)
    return StepData(intervals_from_cumulative([c for _, c in judged], base), base, False)


class SequentialJudge:
    roles = ("candidate", "stable")

    def __init__(self, spec: SequentialJudgeSpec) -> None:
        self.spec = spec

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        spec = self.spec
        cand, stable = _counts(measured["candidate"]), _counts(measured["stable"])
        if cand is None or stable is None:
            return Decision(Verdict.INCONCLUSIVE, f"{name}: the sequential judge needs request and error counts; "
                                                  "use a counting query (error_rate, slow_ratio>Nms, ...)")
        now = (cand[0], cand[1], stable[0], stable[1])
        widest = max(float(measured[r].detail.get("window_s", ctx.window_s)) for r in self.roles)
        if widest > ctx.window_s + 0.5:  # the provider widened a young step's window (two scrapes at least)
            return Decision(Verdict.INCONCLUSIVE, f"{name}: the counts span {widest:g}s, more than the step's "
                                                  f"{ctx.window_s:g}s so far (a count window covers at least two "
                                                  "scrape intervals); judged once the step is that old")
        step_number = int(ctx.carried.get("carry.steps", 0)) + 1
        warmup = spec.warmup_s if step_number == 1 else 0.0
        points = [(w, c) for w, c in ctx.earlier if w < ctx.window_s] + [(ctx.window_s, now)]
        data = step_data(points, warmup)
        keep: dict[str, float] = {"seq.window_s": ctx.window_s, "seq.c.requests": now[0], "seq.c.bad": now[1],
                                  "seq.s.requests": now[2], "seq.s.bad": now[3]}
        if warmup:
            keep.update({"warmup.candidate.requests": data.warmup[0], "warmup.candidate.bad": data.warmup[1],
                         "warmup.stable.requests": data.warmup[2], "warmup.stable.bad": data.warmup[3]})
        if data.warming_up:
            return Decision(Verdict.INCONCLUSIVE, f"{name}: warming up - the candidate's first {warmup:g}s are not "
                                                  f"judged (candidate {_pct(now[1], now[0])} so far)", detail=keep)
        iv = data.intervals
        nc, xc, ns, xs = (float(iv.n_c.sum()), float(iv.x_c.sum()), float(iv.n_s.sum()), float(iv.x_s.sum()))
        rho0 = 1.0 + spec.min_relative_effect
        buckets = spec.unit == "buckets"
        log_step = log_e_buckets_greater(iv, rho0) if buckets else log_e_counts_greater(iv, rho0)
        log_carry = ctx.carried.get("carry.log_a") if step_number > 1 else None
        log_fail, carry = combined_log_e(log_step, log_carry, step_number)
        keep.update({"carry.log_a": carry, "carry.steps": float(step_number), "seq.log_e_step": log_step,
                     "seq.log_e_fail": log_fail})
        log_pass = 0.0
        if spec.early_pass_effect is not None:
            rho1 = 1.0 + spec.early_pass_effect
            log_pass = log_e_buckets_less(iv, rho1) if buckets else log_e_counts_less(iv, rho1)
            keep["seq.log_e_pass"] = log_pass
        fail_at, pass_at = -math.log(spec.alpha), -math.log(spec.beta)
        # What the step could detect: the restart at this step alone (its weight, plus the carry).
        log_prior = float(np.logaddexp(log_carry, math.log(restart_weight(step_number)))) if log_carry is not None \
            else math.log(restart_weight(step_number))
        mde = smallest_detectable(iv, rho0, fail_at - log_prior, spec.power, spec.unit)
        if mde is not None:
            keep["seq.detectable_increase"] = mde - 1.0
        shown_mde = f"+{100 * (mde - 1):.3g}%" if mde is not None else "none (too little data)"
        text = (f"{name}: candidate {_pct(xc, nc)} vs stable {_pct(xs, ns)}"
                + (f" ({spec.unit})" if buckets else ""))
        notes = []
        share = share_of(ctx)
        if share is not None and nc + ns > 0:
            log_srm = log_e_srm(nc, ns, share)
            keep["seq.log_e_srm"] = log_srm
            if log_srm >= -math.log(spec.srm_alpha):
                notes.append(f"note: the candidate served {100 * nc / (nc + ns):.3g}% of requests, configured "
                             f"{100 * share:.3g}% (sample ratio mismatch; the test uses what each version served)")
        if warmup:
            notes.append(f"warm-up: first {warmup:g}s not judged (candidate {_pct(data.warmup[1], data.warmup[0])})")
        tail = ("; " + "; ".join(notes)) if notes else ""
        e_fail = math.exp(min(log_fail, 700.0))
        if log_fail >= fail_at:
            tol = f" beyond the tolerated +{100 * spec.min_relative_effect:.3g}%" if spec.min_relative_effect else ""
            return Decision(Verdict.FAIL, f"{text}: candidate worse{tol} (evidence {e_fail:.3g} >= "
                                          f"{1 / spec.alpha:.3g} = 1/alpha){tail}", final=True, detail=keep)
        if spec.early_pass_effect is not None and log_pass >= pass_at:
            return Decision(Verdict.PASS, f"{text}: a {100 * spec.early_pass_effect:.3g}% increase is ruled out "
                                          f"(evidence {math.exp(min(log_pass, 700.0)):.3g} >= {1 / spec.beta:.3g}); "
                                          f"smallest detectable increase {shown_mde}{tail}", final=True, detail=keep)
        status = (f"no evidence of a regression (evidence {e_fail:.3g} of {1 / spec.alpha:.3g} needed to fail); "
                  f"smallest detectable increase {shown_mde}")
        if mde is not None and mde <= 1.0 + spec.detectable_effect + 1e-9:
            return Decision(Verdict.PASS, f"{text}: {status}{tail}", detail=keep)
        return Decision(Verdict.INCONCLUSIVE,
                        f"{text}: {status}, not yet the +{100 * spec.detectable_effect:.3g}% required "
                        f"(detectable_effect, power {spec.power:g}): not enough data to pass{tail}", detail=keep)
