"""How fast, and how right, does a rollout decide? A figure, not a test.

Drives the real engine (``rollout.engine.run_until_settled``) in virtual time (``VirtualClock``)
with a simulated platform and a simulated metric provider fed by per-version Poisson
request streams, and compares three analysis policies on the same streams (the same
seed per run index):

- flagger: Flagger's defaults - interval 1m, stepWeight 10, maxWeight 50, threshold 5,
  request-success-rate >= 99% and request-duration p99 <= a bound, each over the last
  1m. A passing check advances the weight; a failing one keeps it; the 5th failed
  check of the canary rolls back.
- argo: a typical Argo Rollouts canary (setWeight 10..50, a 1m pause each) with a
  background analysis: interval 1m, success rate >= 0.95 and p99 <= the same bound
  over the last 1m, failureLimit 3 (the 4th failed measurement aborts).
- sequential: this project's sequential judge on error counts and on counts of requests
  slower than stable's p99, the same weights, 1m per step at most, measured every 10 s,
  passing a step early once a doubling of bad requests is ruled out.

Flagger's and Argo's rollout-wide failure counters are emulated by a bench-only judge
wrapping the project's threshold judge (our runner counts failures per step).

Run: ``python bench/detection.py`` (about a minute or two on 2 cores); writes
bench/results/detection.md. ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.analysis import judges as judges_mod  # noqa: E402
from rollout.analysis.base import Decision, Measurement, QueryContext, Verdict  # noqa: E402
from rollout.analysis.judges import ThresholdJudge  # noqa: E402
from rollout.clock import VirtualClock  # noqa: E402
from rollout.engine import Services, run_until_settled  # noqa: E402
from rollout.platforms.base import Capabilities, Health, Traffic  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402
from rollout.spec import parse_spec  # noqa: E402
from rollout.testing import MemoryStore  # noqa: E402

RPS = 50.0  # total requests per second reaching the model
BASE_ERROR = 0.01
LAT_MEDIAN_MS, LAT_SIGMA = 50.0, 0.5  # log-normal latency; p99 = 160 ms
STABLE_P99_MS = LAT_MEDIAN_MS * math.exp(2.3263478740408408 * LAT_SIGMA)
P99_BOUND_MS = 1.2 * STABLE_P99_MS  # the baselines' latency threshold: stable p99 + 20%
WEIGHTS = (10, 20, 30, 40, 50)
HORIZON_S = 1200
EDGES_MS = np.unique(np.concatenate([np.geomspace(1, 20000, 400), [STABLE_P99_MS]]))
SEQ_ALPHA_ROLLOUT = 0.05
SEQ_TESTS = 2  # two sequential metrics; evidence carries across steps, so alpha is per rollout


@dataclass(frozen=True)
class Arm:
    error: float = BASE_ERROR
    latency_scale: float = 1.0

    def bin_probs(self) -> np.ndarray:
        from scipy.stats import lognorm

        cdf = lognorm.cdf(EDGES_MS, s=LAT_SIGMA, scale=LAT_MEDIAN_MS * self.latency_scale)
        probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
        return np.clip(probs, 0, None) / probs.sum()


SCENARIOS: dict[str, Arm] = {
    "A/A (identical)": Arm(),
    "errors 1% -> 2%": Arm(error=0.02),
    "errors 1% -> 5%": Arm(error=0.05),
    "p99 latency +30%": Arm(latency_scale=1.3),
}


# ------------------------------------------------------------------ the simulated world


class World:
    """Per-second request streams for stable and candidate, simulated up to the clock."""

    def __init__(self, seed: int, candidate: Arm, clock: VirtualClock) -> None:
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self.t0 = clock.now()
        self.total = self.rng.poisson(RPS, HORIZON_S)
        self.arms = {"v1": Arm(), "v2": candidate}
        self.probs = {v: a.bin_probs() for v, a in self.arms.items()}
        self.n = {v: np.zeros(HORIZON_S, np.int64) for v in self.arms}
        self.err = {v: np.zeros(HORIZON_S, np.int64) for v in self.arms}
        self.hist = {v: np.zeros((HORIZON_S, len(EDGES_MS) + 1), np.int64) for v in self.arms}
        self.done = 0  # seconds simulated
        self.weight = 0

    def advance(self) -> None:
        upto = min(HORIZON_S, int(self.clock.now() - self.t0))
        if upto <= self.done:
            return
        sl = slice(self.done, upto)
        n_c = self.rng.binomial(self.total[sl], self.weight / 100.0)
        for v, n in (("v2", n_c), ("v1", self.total[sl] - n_c)):
            self.n[v][sl] = n
            self.err[v][sl] = self.rng.binomial(n, self.arms[v].error)
            self.hist[v][sl] = self.rng.multinomial(n, self.probs[v])
        self.done = upto

    def set_weight(self, weight: int) -> None:
        self.advance()
        self.weight = weight

    def window(self, version: str, seconds: float) -> tuple[int, int, np.ndarray]:
        self.advance()
        a = max(0, self.done - int(round(seconds)))
        return (int(self.n[version][a:self.done].sum()), int(self.err[version][a:self.done].sum()),
                self.hist[version][a:self.done].sum(axis=0))

    def candidate_requests(self) -> int:
        self.advance()
        return int(self.n["v2"][: self.done].sum())


class SimPlatform:
    name = "sim"
    model = "fraud"

    def __init__(self, world: World) -> None:
        self.world = world
        self.running: set[str] = set()

    def capabilities(self) -> Capabilities:
        return Capabilities(mirror=False, preview=False, exact_weights=True)

    def deploy(self, version: ModelVersion, replicas: int = 1) -> None:
        self.running.add(version.version)

    def set_traffic(self, traffic: Traffic) -> None:
        self.world.set_weight(traffic.weight if traffic.candidate else 0)

    def get_traffic(self) -> Traffic | None:
        return None

    def retire(self, version: str) -> None:
        self.running.discard(version)

    def health(self, version: str) -> Health:
        return Health(version, True)

    def endpoint(self) -> str | None:
        return None

    def preview_endpoint(self) -> str | None:
        return None

    def running_versions(self) -> list[str]:
        return sorted(self.running)


def p99_ms(hist: np.ndarray) -> float | None:
    total = hist.sum()
    if total == 0:
        return None
    idx = int(np.searchsorted(np.cumsum(hist), 0.99 * total))
    return float(EDGES_MS[min(idx, len(EDGES_MS) - 1)])  # the bucket's upper edge, as histogram_quantile


class SimProvider:
    """Queries: success_rate_1m and p99_ms_1m (last minute, like Flagger/Argo queries);
    errors and slow (counts since the step began, for the sequential judge)."""

    name = "sim"

    def __init__(self, world: World) -> None:
        self.world = world

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        if query.endswith("_1m"):
            n, e, h = self.world.window(ctx.version, 60)
            if n == 0:
                return Measurement.no_data("no requests")
            return Measurement.of(1 - e / n if query == "success_rate_1m" else p99_ms(h))
        n, e, h = self.world.window(ctx.version, ctx.window_s)
        if n == 0:
            return Measurement.no_data("no requests")
        bad = e if query == "errors" else int(h[np.searchsorted(EDGES_MS, STABLE_P99_MS) + 1:].sum())
        return Measurement.of(bad / n, {"requests": n, "errors": bad})


# ------------------------------------------------------------------ baseline semantics


class CheckCounter:
    """Failed checks over the whole rollout (Flagger's FailedChecks, Argo's failureLimit)."""

    def __init__(self, limit: int, advance_on_pass: bool) -> None:
        self.failed = 0
        self.limit = limit
        self.advance_on_pass = advance_on_pass


class CountingThreshold:
    def __init__(self, spec: Any, role: str, counter: CheckCounter) -> None:
        self.inner = ThresholdJudge(spec, role)
        self.roles = self.inner.roles
        self.counter = counter

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        d = self.inner.decide(name, measured, ctx)
        c = self.counter
        if d.verdict is Verdict.FAIL:
            c.failed += 1
            if c.failed >= c.limit:
                return Decision(Verdict.FAIL, f"{d.reason} (failed check {c.failed}/{c.limit})", final=True)
            return Decision(Verdict.PASS if not c.advance_on_pass else Verdict.INCONCLUSIVE,
                            f"{d.reason} (failed check {c.failed}/{c.limit}, tolerated)")
        return Decision(Verdict.PASS, d.reason, final=c.advance_on_pass)


def spec_for(policy: str) -> Any:
    steps: list[dict[str, Any]] = []
    if policy == "flagger":
        # one step per weight; a passing check advances, failing ones repeat the check
        for w in WEIGHTS:
            steps += [{"set_weight": w}, {"analysis": {"duration_s": 60 * 10}}]
        metrics = [
            {"name": "request-success-rate", "provider": "sim", "query": "success_rate_1m",
             "judge": {"type": "threshold", "min": 0.99}, "failure_limit": 100},
            {"name": "request-duration", "provider": "sim", "query": "p99_ms_1m",
             "judge": {"type": "threshold", "max": P99_BOUND_MS}, "failure_limit": 100},
        ]
        interval = 60
    elif policy == "argo":
        for w in WEIGHTS:
            steps += [{"set_weight": w}, {"analysis": {"duration_s": 60}}]
        metrics = [
            {"name": "success-rate", "provider": "sim", "query": "success_rate_1m",
             "judge": {"type": "threshold", "min": 0.95}, "failure_limit": 100},
            {"name": "latency-p99", "provider": "sim", "query": "p99_ms_1m",
             "judge": {"type": "threshold", "max": P99_BOUND_MS}, "failure_limit": 100},
        ]
        interval = 60
    else:
        for w in WEIGHTS:
            steps += [{"set_weight": w}, {"analysis": {"duration_s": 60}}]
        judge = {"type": "sequential", "alpha": SEQ_ALPHA_ROLLOUT / SEQ_TESTS, "early_pass_effect": 1.0,
                 "beta": 0.05}
        metrics = [
            {"name": "errors", "provider": "sim", "query": "errors", "judge": judge},
            {"name": "slow-requests", "provider": "sim", "query": "slow", "judge": judge},
        ]
        interval = 10
    return parse_spec({
        "model": "fraud", "registry": {"type": "git", "url": "/nonexistent"},
        "strategy": {"type": "canary", "steps": steps, "scale_down_delay_s": 0},
        "analysis": {"interval_s": interval, "inconclusive": "pause", "metrics": metrics},
    })


@dataclass(frozen=True)
class Outcome:
    phase: str
    seconds: float
    blast: int  # requests the candidate served before the decision


def run_one(policy: str, scenario: str, seed: int) -> Outcome:
    clock = VirtualClock()
    world = World(seed, SCENARIOS[scenario], clock)
    counter = CheckCounter(limit=5 if policy == "flagger" else 4, advance_on_pass=policy == "flagger")
    judges_mod.JUDGES["threshold"] = lambda spec, role: CountingThreshold(spec, role, counter)
    spec = spec_for(policy)
    services = Services(store=MemoryStore(), platform=SimPlatform(world), providers={"sim": SimProvider(world)},
                        clock=clock, poll_s=10.0)
    run_until_settled(spec, services, ModelVersion("fraud", "v1", "sim://v1"))
    started = clock.now()
    ms = run_until_settled(spec, services, ModelVersion("fraud", "v2", "sim://v2"))
    assert ms.rollout is not None
    return Outcome(ms.rollout.phase.value, clock.now() - started, world.candidate_requests())


def run_batch(args: tuple[str, str, list[int]]) -> list[Outcome]:
    import logging

    logging.disable(logging.CRITICAL)
    policy, scenario, seeds = args
    return [run_one(policy, scenario, s) for s in seeds]


# ------------------------------------------------------------------ Wald's SPRT, the physical limit


def sprt_seconds(cand: Arm, alpha: float, beta: float) -> tuple[float, float]:
    """Wald's approximation of the expected time (s) and candidate requests a simple-vs-
    simple SPRT (H0 rho=1 against the true rho, known) needs on the arm labels of bad
    requests, on the same weight schedule (60 s per weight, then 100%): the time at
    which the expected log-likelihood ratio reaches Wald's E[log LR at stopping]."""
    from scipy.stats import lognorm

    q_s = BASE_ERROR
    q_c = cand.error if cand.error != BASE_ERROR else float(
        lognorm.sf(STABLE_P99_MS, s=LAT_SIGMA, scale=LAT_MEDIAN_MS * cand.latency_scale))
    a, b = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    target = (1 - beta) * a + beta * b
    drift_total, t, served = 0.0, 0.0, 0.0
    for w in [*WEIGHTS, 100]:
        s = w / 100.0
        if s >= 1.0:
            return float("inf"), float("inf")
        th0, th1 = s, s * q_c / (s * q_c + (1 - s) * q_s)
        kl = th1 * math.log(th1 / th0) + (1 - th1) * math.log((1 - th1) / (1 - th0))
        drift = RPS * (s * q_c + (1 - s) * q_s) * kl  # expected log LR gained per second
        need = (target - drift_total) / drift
        if need <= 60 or w == WEIGHTS[-1]:
            return t + need, served + need * RPS * s
        drift_total += 60 * drift
        t += 60
        served += 60 * RPS * s
    return float("inf"), float("inf")


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="runs per regression scenario and policy")
    ap.add_argument("--aa-runs", type=int, default=1000, help="A/A runs per policy")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "detection.md"))
    args = ap.parse_args()
    if args.quick:
        args.runs, args.aa_runs = 20, 50
    policies = ("flagger", "argo", "sequential")
    jobs = []
    for scenario in SCENARIOS:
        n = args.aa_runs if scenario.startswith("A/A") else args.runs
        for policy in policies:
            seeds = list(range(n))
            chunk = max(1, n // (args.workers * 4))
            for i in range(0, n, chunk):
                jobs.append((policy, scenario, seeds[i:i + chunk]))
    began = time.monotonic()
    results: dict[tuple[str, str], list[Outcome]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for (policy, scenario, _), outs in zip(jobs, pool.map(run_batch, jobs)):
            results.setdefault((policy, scenario), []).extend(outs)
    took = time.monotonic() - began

    alpha_test = SEQ_ALPHA_ROLLOUT / SEQ_TESTS
    lines = [
        "# Detection benchmark",
        "",
        f"`python bench/detection.py` - real engine, virtual time, {RPS:g} req/s in total, Poisson; "
        f"stable: {100 * BASE_ERROR:g}% errors, log-normal latency (median {LAT_MEDIAN_MS:g} ms, "
        f"p99 {STABLE_P99_MS:.0f} ms). Canary weights {', '.join(map(str, WEIGHTS))}% then promotion. "
        f"Baselines' latency check: p99 over the last minute <= {P99_BOUND_MS:.0f} ms (stable p99 + 20%). "
        f"Sequential: alpha {alpha_test:g} per metric (2 metrics: {SEQ_ALPHA_ROLLOUT:g} per rollout, evidence "
        "carried across steps), "
        f"beta 0.05, early pass once a doubling is ruled out, measured every 10 s, slow = slower than "
        f"stable's p99. {args.runs} runs per regression and policy, {args.aa_runs} A/A runs per policy "
        f"({took:.0f} s on {args.workers} workers).",
        "",
        "| scenario | policy | rolled back | promoted | paused | mean time to decision | "
        "mean blast radius (candidate requests) | time vs flagger | time vs argo | blast vs flagger | blast vs argo |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def stats(outs: list[Outcome], phase: str) -> tuple[float, float, float]:
        sel = [o for o in outs if o.phase == phase]
        if not sel:
            return float("nan"), float("nan"), 0.0
        return (float(np.mean([o.seconds for o in sel])), float(np.mean([o.blast for o in sel])),
                len(sel) / len(outs))

    for scenario, arm in SCENARIOS.items():
        aa = scenario.startswith("A/A")
        # For a regression the decision that counts is the rollback; for A/A the whole rollout.
        target = "Promoted" if aa else "RolledBack"
        base = {p: stats(results[(p, scenario)], target) for p in policies}
        for policy in policies:
            outs = results[(policy, scenario)]
            phases = {ph: sum(o.phase == ph for o in outs) / len(outs) for ph in ("RolledBack", "Promoted", "Paused")}
            t, b, _ = base[policy]

            def ratio(x: float, y: float) -> str:
                return "-" if policy != "sequential" or not (y > 0) or math.isnan(x) or math.isnan(y) else f"{x / y:.2f}x"

            lines.append(
                f"| {scenario} | {policy} | {100 * phases['RolledBack']:.1f}% | {100 * phases['Promoted']:.1f}% | "
                f"{100 * phases['Paused']:.1f}% | {t:.0f} s | {b:.0f} | {ratio(t, base['flagger'][0])} | "
                f"{ratio(t, base['argo'][0])} | {ratio(b, base['flagger'][1])} | {ratio(b, base['argo'][1])} |"
            )
        if not aa:
            sec, req = sprt_seconds(arm, alpha_test, 0.05)
            lines.append(f"| {scenario} | Wald SPRT (limit) | - | - | - | {sec:.0f} s | {req:.0f} | | | | |")
    lines += [
        "",
        "Time to decision and blast radius are averaged over runs that rolled back (regressions) or promoted "
        "(A/A); for A/A the *rolled back* column is the false-rollback rate. Wald's SPRT row: expected time and "
        f"candidate requests (Wald's approximation) for a simple-vs-simple SPRT on the same bad-request counts, "
        f"on the same weight schedule, with the same alpha ({alpha_test:g}) and beta (0.05), knowing the true "
        "effect - the physical limit for a test that must also hold alpha; a test that does not know the effect "
        "pays for that. Flagger's 99% success-rate default sits exactly at the stable version's 1% error rate, "
        "which is why it 'detects' every regression and also rolls back most identical versions; Argo's 95% "
        "misses small error regressions. Both baselines' figures depend on these thresholds; the sequential "
        "judge's do not (it compares with stable on the same traffic).",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
