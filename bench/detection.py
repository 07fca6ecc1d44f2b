"""How right, and how fast, does a rollout decide on traffic that is not textbook Poisson?
A figure, not a test.

A traffic simulator produces, second by second, the requests each version serves and
their errors and slow requests, for a set of traffic classes:

- poisson: independent requests, 100 req/s, the split as configured;
- bursts-f2 / f4 / f9: errors clustered in bursts of a few seconds *within each version*
  (independently per version), tuned so stable's 10-s error counts have a Fano factor of
  about 2, 4 and 9 (the measured Fano factor is printed);
- pod-bursts: the same bursts per pod, 1 candidate pod against 9 stable pods;
- cold-pods: identical code, but the candidate fails 5% of requests for its first 30 s;
- diurnal: the request rate ramps from 0.25x to 2x over the rollout;
- 1rps / 0.1rps: low traffic;
- sticky: 400 clients pinned to a version, with unequal request rates and unequal error
  propensities (a Gamma(4) multiplier per client);
- replica-split: the split is the replica ratio (1 candidate pod, 3 stable: 25%) whatever
  the configured weight;
- scrape: counts come through a simulated Prometheus that scrapes the counters every 15 s
  (random phase); the provider takes counter deltas between scrapes, no extrapolation.

Policies, on the same streams (the same seed per run index):

- sequential: this project's judge, one metric at alpha 0.05: error counts, or (latency
  scenario) counts of requests slower than 250 ms (an Istio histogram bucket); unit
  ``requests``; run by the real engine in virtual time (``run_rollout``: the only place
  that touches the engine);
- sequential-buckets: the same with ``unit: buckets`` (10-s intervals as units);
- flagger / flagger-tuned: Flagger's documented analysis (interval 1m, stepWeight 10,
  maxWeight 50, threshold 5 failed checks, a failed or missing metric is a failed check,
  request-success-rate >= 99% and request-duration p99 <= 500 ms, p99 interpolated in
  Istio's histogram buckets like histogram_quantile); tuned: success rate >= 98% (stable's
  error rate doubled) and p99 <= 500 ms;
- argo / argo-tuned: Argo Rollouts setWeight 10/25/50 with a 4m pause each and a
  background analysis every 1m over the last 1m, success rate >= 95% and p99 <= 500 ms,
  failureLimit 0 (Argo's default: the first failed measurement aborts),
  consecutiveErrorLimit 4 (no data is an error); tuned: failureLimit 3, success >= 98%;
- Wald's SPRT: a simple-vs-simple SPRT on the error counts that knows the true effect,
  alpha 0.05, beta 0.05, looked at on the same 10-s ticks and the sequential policy's
  weight schedule, skipping the same 30-s warm-up - the limit a test that must also hold
  alpha cannot beat.

Run: ``nice -n 10 python bench/detection.py`` (writes bench/results/detection.md);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.analysis.base import Measurement, QueryContext  # noqa: E402
from rollout.spec import parse_spec  # noqa: E402

BASE_ERROR = 0.01
LAT_MEDIAN_MS, LAT_SIGMA = 80.0, 0.5  # log-normal latency; stable p99 ~ 256 ms
SLOW_BUCKET_MS = 250.0  # an Istio histogram bucket
ISTIO_BUCKETS_MS = np.array([1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000], float)
SEQ_STEPS = ((10, 360), (25, 240), (50, 180))  # (weight %, longest analysis, s)
INTERVAL_S = 10
HORIZON_S = 1500
ALPHA = 0.05
WARMUP_S = 30  # the sequential judge's default warm-up
BETA = 0.05


# ------------------------------------------------------------------ traffic classes


@dataclass(frozen=True)
class TrafficClass:
    rps: float = 100.0
    burst_k: float = 0.0  # error-rate multiplier during a burst (within a version)
    pod_bursts: bool = False
    cold: bool = False
    diurnal: bool = False
    sticky: bool = False
    replica_share: float | None = None
    scrape: bool = False


CLASSES: dict[str, TrafficClass] = {
    "poisson": TrafficClass(),
    "bursts-f2": TrafficClass(burst_k=2.7),
    "bursts-f4": TrafficClass(burst_k=5.0),
    "bursts-f9": TrafficClass(burst_k=9.0),
    "pod-bursts": TrafficClass(pod_bursts=True),
    "cold-pods": TrafficClass(cold=True),
    "diurnal": TrafficClass(diurnal=True),
    "1rps": TrafficClass(rps=1.0),
    "0.1rps": TrafficClass(rps=0.1),
    "sticky": TrafficClass(sticky=True),
    "replica-split": TrafficClass(replica_share=0.25),
    "scrape": TrafficClass(scrape=True),
}
BURST_START_PER_S, BURST_MEAN_S = 0.02, 3.0
PODS_STABLE, POD_BURST_K = 9, 10.0


@dataclass(frozen=True)
class Scenario:
    error: float = BASE_ERROR
    latency_scale: float = 1.0

    def slow_prob(self) -> float:
        return float(self.bucket_probs()[int(np.searchsorted(ISTIO_BUCKETS_MS, SLOW_BUCKET_MS)) + 1:].sum())

    def bucket_probs(self) -> np.ndarray:
        from scipy.special import ndtr

        z = (np.log(ISTIO_BUCKETS_MS) - math.log(LAT_MEDIAN_MS * self.latency_scale)) / LAT_SIGMA
        probs = np.diff(np.concatenate([[0.0], ndtr(z), [1.0]]))
        return np.clip(probs, 0, None) / probs.sum()


SCENARIOS: dict[str, Scenario] = {
    "A/A": Scenario(),
    "errors 1% -> 2%": Scenario(error=0.02),
    "errors 1% -> 5%": Scenario(error=0.05),
    "latency +30%": Scenario(latency_scale=1.3),
}


def _bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """0/1 per second: bursts start at BURST_START_PER_S and last ~BURST_MEAN_S seconds."""
    on = np.zeros(n)
    starts = np.flatnonzero(rng.random(n) < BURST_START_PER_S)
    for s in starts:
        on[s:s + max(1, int(rng.geometric(1 / BURST_MEAN_S)))] = 1.0
    return on


class World:
    """Per-second streams for v1 (stable) and v2 (candidate), simulated up to the clock."""

    def __init__(self, seed: int, cls: TrafficClass, scenario: Scenario) -> None:
        self.rng = np.random.default_rng(seed)
        self.cls, self.scenario = cls, scenario
        rng, n = self.rng, HORIZON_S
        ramp = np.linspace(0.25, 2.0, n) if cls.diurnal else np.ones(n)
        self.rate = cls.rps * ramp
        mult = {"v1": np.ones(n), "v2": np.ones(n)}
        if cls.burst_k:
            for v in mult:
                mult[v] = 1.0 + cls.burst_k * _bursts(rng, n)
        if cls.pod_bursts:
            mult["v1"] = 1.0 + POD_BURST_K * np.mean([_bursts(rng, n) for _ in range(PODS_STABLE)], axis=0)
            mult["v2"] = 1.0 + POD_BURST_K * _bursts(rng, n)
        self.mult = mult
        self.err = {"v1": BASE_ERROR, "v2": scenario.error}
        self.slow = {"v1": Scenario().slow_prob(), "v2": scenario.slow_prob()}
        self.buckets = {"v1": Scenario().bucket_probs(), "v2": scenario.bucket_probs()}
        if cls.sticky:
            self.client_rate = rng.lognormal(0, 1, 400)
            self.client_rate /= self.client_rate.sum()
            self.client_err = rng.gamma(4.0, 0.25, 400)
            self.client_u = rng.random(400)
        self.scrape_phase = float(rng.uniform(0, 15))
        self.n = {v: np.zeros(n, np.int64) for v in ("v1", "v2")}
        self.e = {v: np.zeros(n, np.int64) for v in ("v1", "v2")}
        self.s = {v: np.zeros(n, np.int64) for v in ("v1", "v2")}
        self.h = {v: np.zeros((n, len(ISTIO_BUCKETS_MS) + 1), np.int64) for v in ("v1", "v2")}
        self.done = 0
        self.weight = 0
        self.first_traffic: int | None = None

    def share(self) -> float:
        if self.weight <= 0:
            return 0.0
        if self.weight >= 100:
            return 1.0
        return self.cls.replica_share if self.cls.replica_share is not None else self.weight / 100.0

    def advance(self, upto: int) -> None:
        """Simulate seconds [done, upto): the split is constant in between (it changes only when
        the platform sets traffic, which advances the world first)."""
        upto = min(HORIZON_S, upto)
        if upto <= self.done:
            return
        rng, sl, share = self.rng, slice(self.done, upto), self.share()
        total = rng.poisson(self.rate[sl])
        if self.cls.sticky:
            on_c = self.client_u < share
            per_client = rng.multinomial(total, self.client_rate)  # (seconds, clients)
            n_c, n_s = per_client[:, on_c].sum(axis=1), per_client[:, ~on_c].sum(axis=1)
            w_c = (per_client[:, on_c] * self.client_err[on_c]).sum(axis=1) / np.maximum(n_c, 1)
            w_s = (per_client[:, ~on_c] * self.client_err[~on_c]).sum(axis=1) / np.maximum(n_s, 1)
        else:
            n_c = rng.binomial(total, share)
            n_s, w_c, w_s = total - n_c, 1.0, 1.0
        if self.first_traffic is None and n_c.any():
            self.first_traffic = self.done + int(np.flatnonzero(n_c)[0])
        slow_from = int(np.searchsorted(ISTIO_BUCKETS_MS, SLOW_BUCKET_MS)) + 1
        for v, k, w in (("v2", n_c, w_c), ("v1", n_s, w_s)):
            p = self.err[v] * self.mult[v][sl] * w
            if v == "v2" and self.cls.cold and self.first_traffic is not None:
                secs = np.arange(self.done, upto)
                p = np.where((secs >= self.first_traffic) & (secs - self.first_traffic < 30), np.maximum(p, 0.05), p)
            self.n[v][sl] = k
            self.e[v][sl] = rng.binomial(k, np.minimum(p, 1.0))
            self.h[v][sl] = rng.multinomial(k, self.buckets[v])
            self.s[v][sl] = self.h[v][sl][:, slow_from:].sum(axis=1)  # above the 250 ms bucket
        self.done = upto

    def counts(self, version: str, t0: float, t1: float) -> tuple[int, int, int]:
        """(requests, errors, slow) served in [t0, t1) seconds since the world began; through a
        simulated 15-s scrape when the class says so (deltas between the scrapes inside the window)."""
        a, b = max(0, int(round(t0))), max(0, int(round(t1)))
        self.advance(b)
        if self.cls.scrape:
            scrapes = [int(math.floor(x)) for x in np.arange(self.scrape_phase, b + 1, 15.0) if a <= x <= b]
            if len(scrapes) < 2:
                return 0, 0, 0
            a, b = scrapes[0], scrapes[-1]
        return (int(self.n[version][a:b].sum()), int(self.e[version][a:b].sum()), int(self.s[version][a:b].sum()))

    def hist(self, version: str, t0: float, t1: float) -> np.ndarray:
        a, b = max(0, int(round(t0))), max(0, int(round(t1)))
        self.advance(b)
        return self.h[version][a:b].sum(axis=0)

    def candidate_served(self, upto: float) -> int:
        self.advance(int(upto))
        return int(self.n["v2"][: int(upto)].sum())


# ------------------------------------------------------------------ the sequential policy (real engine)


SEQ_T0 = 1_700_000_000.0  # the virtual clock's start = second 0 of the world


class SimProvider:
    """Counts since the step began, as a Prometheus pack query would give them."""

    name = "sim"

    def __init__(self, world: World, clock: object) -> None:
        self.world, self.clock = world, clock

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        now = self.clock.now() - SEQ_T0  # type: ignore[attr-defined]
        window = ctx.window_s
        if self.world.cls.scrape:
            window = max(window, 30.0)  # two scrape intervals, as the Prometheus provider does
        n, e, s = self.world.counts(ctx.version, now - window, now)
        if n == 0:
            return Measurement.no_data("no requests", kind="zero_requests")
        bad = e if query == "errors" else s
        return Measurement.of(bad / n, {"requests": n, "errors": bad, "bad": bad, "window_s": float(round(window))})


def sequential_spec(unit: str, query: str) -> object:
    """One sequential metric (errors, or requests slower than 250 ms) at alpha 0.05."""
    steps: list[dict] = []
    for w, d in SEQ_STEPS:
        steps += [{"set_weight": w}, {"analysis": {"duration_s": d}}]
    judge = {"type": "sequential", "alpha": ALPHA, "beta": BETA, "unit": unit}
    return parse_spec({
        "model": "fraud", "registry": {"type": "git", "url": "/nonexistent"},
        "strategy": {"type": "canary", "steps": steps, "scale_down_delay_s": 0},
        "analysis": {"interval_s": INTERVAL_S, "inconclusive": "pause", "metrics": [
            {"name": query, "provider": "sim", "query": query, "judge": judge}]},
    })


@dataclass(frozen=True)
class Outcome:
    phase: str  # RolledBack, Promoted, Paused
    seconds: float  # from the candidate's first traffic to the decision
    served: int  # candidate requests served before the decision


def run_rollout(spec: object, world: World) -> Outcome:
    """The one place the bench drives the engine: a whole canary of v2 over v1 in virtual time."""
    import logging

    from rollout.clock import VirtualClock
    from rollout.engine import Services, run_until_settled
    from rollout.platforms.base import Capabilities, Health, Traffic
    from rollout.registry.base import ModelVersion
    from rollout.testing import MemoryStore

    logging.disable(logging.CRITICAL)

    class Platform:
        name, model = "sim", "fraud"

        def capabilities(self) -> Capabilities:
            return Capabilities(mirror=False, preview=False, exact_weights=True)

        def deploy(self, version: ModelVersion, replicas: int = 1) -> None: ...

        def set_traffic(self, traffic: Traffic) -> None:
            world.advance(int(clock.now() - SEQ_T0))
            world.weight = traffic.weight if traffic.candidate else 0

        def get_traffic(self) -> Traffic | None:
            return None

        def retire(self, version: str) -> None: ...

        def health(self, version: str) -> Health:
            return Health(version, True)

        def router_health(self) -> Health:
            return Health("router", True)

        def endpoint(self) -> None:
            return None

        def preview_endpoint(self) -> None:
            return None

        def running_versions(self) -> list[str]:
            return ["v1", "v2"]

    clock = VirtualClock(SEQ_T0)
    services = Services(store=MemoryStore(), platform=Platform(), providers={"sim": SimProvider(world, clock)},
                        clock=clock, poll_s=10.0)
    run_until_settled(spec, services, ModelVersion("fraud", "v1", "sim://v1"))  # the first stable
    ms = run_until_settled(spec, services, ModelVersion("fraud", "v2", "sim://v2"))
    assert ms.rollout is not None
    end = clock.now() - SEQ_T0
    first = world.first_traffic or 0
    return Outcome(ms.rollout.phase.value, end - first, world.candidate_served(end))


# ------------------------------------------------------------------ baselines (their documented state machines)


def success_rate(world: World, version: str, t0: float, t1: float) -> float | None:
    n, e, _ = world.counts(version, t0, t1)
    return None if n == 0 else 1 - e / n


def p99_istio(world: World, version: str, t0: float, t1: float) -> float | None:
    """histogram_quantile(0.99, ...) over Istio's buckets: linear interpolation in the bucket."""
    h = world.hist(version, t0, t1)
    total = h.sum()
    if total == 0:
        return None
    cum = np.cumsum(h)
    rank = 0.99 * total
    i = int(np.searchsorted(cum, rank))
    if i >= len(ISTIO_BUCKETS_MS):
        return float(ISTIO_BUCKETS_MS[-1])
    lo = 0.0 if i == 0 else ISTIO_BUCKETS_MS[i - 1]
    below = 0 if i == 0 else cum[i - 1]
    return float(lo + (ISTIO_BUCKETS_MS[i] - lo) * (rank - below) / max(h[i], 1))


def check(world: World, t: float, min_success: float, max_p99: float) -> bool | None:
    """Both checks over the last minute; None: no data."""
    sr, p99 = success_rate(world, "v2", t - 60, t), p99_istio(world, "v2", t - 60, t)
    if sr is None or p99 is None:
        return None
    return sr >= min_success and p99 <= max_p99


def run_flagger(world: World, min_success: float) -> Outcome:
    weight, failed, t = 10, 0, 0.0
    world.weight = weight
    while t < HORIZON_S - 61:
        t += 60
        ok = check(world, t, min_success, 500.0)
        if not ok:  # a failed check or no data
            failed += 1
            if failed >= 5:
                return Outcome("RolledBack", t, world.candidate_served(t))
            continue
        if weight >= 50:
            return Outcome("Promoted", t, world.candidate_served(t))
        world.advance(int(t))
        weight += 10
        world.weight = weight
    return Outcome("Paused", t, world.candidate_served(t))


def run_argo(world: World, min_success: float, failure_limit: int) -> Outcome:
    failed, errors, t = 0, 0, 0.0
    for weight in (10, 25, 50):
        world.advance(int(t))
        world.weight = weight
        for _ in range(4):  # pause 4m, a measurement each minute
            t += 60
            ok = check(world, t, min_success, 500.0)
            if ok is None:
                errors += 1
                if errors > 4:
                    return Outcome("RolledBack", t, world.candidate_served(t))  # AnalysisRun Error aborts
                continue
            errors = 0
            if not ok:
                failed += 1
                if failed > failure_limit:
                    return Outcome("RolledBack", t, world.candidate_served(t))
    return Outcome("Promoted", t, world.candidate_served(t))


def run_sprt(world: World, rho: float) -> Outcome:
    """Wald's SPRT, rho = 1 against the true rho (known), on the error counts with the observed
    exposure, looked at every 10 s on the sequential policy's weight schedule."""
    upper, lower = math.log((1 - BETA) / ALPHA), math.log(BETA / (1 - ALPHA))
    llr, t = 0.0, 0.0
    for weight, duration in SEQ_STEPS:
        world.advance(int(t))
        world.weight = weight
        began, seen = t, np.zeros(4)
        for _ in range(duration // INTERVAL_S):
            t += INTERVAL_S
            # counts since the step began (through the scrape if the class has one), as the judge sees them
            cum = np.array([*world.counts("v2", began, t)[:2], *world.counts("v1", began, t)[:2]], float)
            n_c, x_c, n_s, x_s = np.maximum(cum - seen, 0)
            seen = np.maximum(cum, seen)
            if t <= WARMUP_S:  # the same warm-up as the sequential judge's default
                continue
            if n_c and n_s:
                log_den = math.log(n_c * rho + n_s) - math.log(n_c + n_s)
                llr += x_c * (math.log(rho) - log_den) - x_s * log_den
            if llr >= upper:
                return Outcome("RolledBack", t, world.candidate_served(t))
            if llr <= lower:
                return Outcome("Promoted", t, world.candidate_served(t))
    return Outcome("Paused", t, world.candidate_served(t))


POLICIES = ("sequential", "sequential-buckets", "flagger", "flagger-tuned", "argo", "argo-tuned", "wald-sprt")


def run_one(policy: str, cls_name: str, scenario: str, seed: int) -> Outcome:
    world = World(seed, CLASSES[cls_name], SCENARIOS[scenario])
    query = "slow" if SCENARIOS[scenario].latency_scale != 1.0 else "errors"
    if policy == "sequential":
        return run_rollout(_SPECS[("requests", query)], world)
    if policy == "sequential-buckets":
        return run_rollout(_SPECS[("buckets", query)], world)
    if policy == "flagger":
        return run_flagger(world, 0.99)
    if policy == "flagger-tuned":
        return run_flagger(world, 1 - 2 * BASE_ERROR)
    if policy == "argo":
        return run_argo(world, 0.95, 0)
    if policy == "argo-tuned":
        return run_argo(world, 1 - 2 * BASE_ERROR, 3)
    rho = SCENARIOS[scenario].error / BASE_ERROR
    return run_sprt(world, rho)


_SPECS: dict[tuple[str, str], object] = {}


def run_batch(args: tuple[str, str, str, list[int]]) -> list[Outcome]:
    os.nice(10) if hasattr(os, "nice") and os.getpriority(os.PRIO_PROCESS, 0) < 10 else None
    if not _SPECS:
        _SPECS.update({(u, q): sequential_spec(u, q) for u in ("requests", "buckets") for q in ("errors", "slow")})
    policy, cls_name, scenario, seeds = args
    return [run_one(policy, cls_name, scenario, s) for s in seeds]


# ------------------------------------------------------------------ report


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def fano(cls: TrafficClass, runs: int = 50) -> float:
    """Fano factor of stable's 10-s error counts at a 10% split, over ``runs`` worlds."""
    vals = []
    for seed in range(runs):
        w = World(10_000 + seed, cls, Scenario())
        w.weight = 10
        w.advance(600)
        c = w.e["v1"][:600].reshape(-1, 10).sum(axis=1)
        if c.mean() > 0:
            vals.append(c.var(ddof=1) / c.mean())
    return float(np.mean(vals)) if vals else float("nan")


@dataclass
class Plan:
    aa_runs: int
    power_runs: int
    baseline_classes: tuple[str, ...]
    power_classes: tuple[str, ...]
    bucket_classes: tuple[str, ...]
    jobs: list[tuple[str, str, str, list[int]]] = field(default_factory=list)


def plan(args: argparse.Namespace) -> Plan:
    p = Plan(args.aa_runs, args.runs, tuple(args.baseline_classes.split(",")), tuple(args.power_classes.split(",")),
             tuple(args.bucket_classes.split(",")))
    for cls_name in CLASSES:
        for scenario in SCENARIOS:
            aa = scenario == "A/A"
            if not aa and cls_name not in p.power_classes:
                continue
            n = p.aa_runs if aa else p.power_runs
            for policy in POLICIES:
                if policy == "wald-sprt" and (aa or SCENARIOS[scenario].error == BASE_ERROR):
                    continue
                if policy.startswith(("flagger", "argo")) and cls_name not in p.baseline_classes:
                    continue
                if policy == "sequential-buckets" and cls_name not in p.bucket_classes:
                    continue
                chunk = max(1, n // 8)
                for i in range(0, n, chunk):
                    p.jobs.append((policy, cls_name, scenario, list(range(i, min(n, i + chunk)))))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aa-runs", type=int, default=400, help="A/A runs per class and policy")
    ap.add_argument("--runs", type=int, default=100, help="runs per regression, class and policy")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-classes", default="poisson,bursts-f4,pod-bursts,cold-pods,1rps")
    ap.add_argument("--power-classes", default="poisson,bursts-f4,pod-bursts,1rps,replica-split,scrape")
    ap.add_argument("--bucket-classes", default="poisson,bursts-f9,pod-bursts",
                    help="classes the bucket unit runs on (it costs as much as the default)")
    ap.add_argument("--steps", default="10:360,25:240,50:180",
                    help="the sequential policies' canary: weight:longest analysis seconds, ...")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--classes", default=",".join(CLASSES), help="traffic classes to run")
    ap.add_argument("--quick", action="store_true", help="a smoke run: prints its tables, writes a file only with --out")
    ap.add_argument("--out", default=None, help="where the report goes (default bench/results/detection.md; "
                                                "with --quick, nowhere but stdout)")
    args = ap.parse_args()
    if args.quick:
        args.aa_runs, args.runs = 16, 8
    if args.out is None and not args.quick:  # a smoke run must never overwrite the committed figures
        args.out = str(Path(__file__).parent / "results" / "detection.md")
    global SEQ_STEPS, HORIZON_S  # set before the worker processes fork
    SEQ_STEPS = tuple((int(w), int(d)) for w, d in (x.split(":") for x in args.steps.split(",")))
    HORIZON_S = max(1500, sum(d for _, d in SEQ_STEPS) + 300)
    p = plan(args)
    p.jobs = [j for j in p.jobs if j[0] in args.policies.split(",") and j[1] in args.classes.split(",")]
    began = time.monotonic()
    results: dict[tuple[str, str, str], list[Outcome]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for (policy, cls_name, scenario, _), outs in zip(p.jobs, pool.map(run_batch, p.jobs)):
            results.setdefault((policy, cls_name, scenario), []).extend(outs)
    took = time.monotonic() - began
    fanos = {c: fano(CLASSES[c]) for c in args.classes.split(",")}
    write_report(Path(args.out) if args.out else None, p, results, fanos, took, args)


def write_report(out: Path | None, p: Plan, results: dict[tuple[str, str, str], list[Outcome]],
                 fanos: dict[str, float], took: float, args: argparse.Namespace) -> None:
    cmd = "nice -n 10 python bench/detection.py " + " ".join(sys.argv[1:])
    lines = [
        "# Detection benchmark",
        "",
        f"`{cmd}` ({took:.0f} s wall on {args.workers} niced workers, {os.cpu_count()} cores shared). "
        f"Stable: {100 * BASE_ERROR:g}% errors, log-normal latency (median {LAT_MEDIAN_MS:g} ms, sigma {LAT_SIGMA}); "
        f"slow = above the {SLOW_BUCKET_MS:g} ms Istio bucket ({100 * Scenario().slow_prob():.2g}% of stable's "
        f"requests). Sequential policies: weights "
        f"{', '.join(f'{w}% (up to {d} s)' for w, d in SEQ_STEPS)}, measured every {INTERVAL_S} s, alpha "
        f"{ALPHA} (one metric: errors; for the latency scenario, requests slower than 250 ms), beta {BETA}, early pass once a doubling is "
        "ruled out, a step passes at its deadline only with 80% power to detect a doubling, 30 s warm-up. "
        f"{p.aa_runs} A/A runs and {p.power_runs} runs per regression per cell; brackets are 95% Wilson intervals. "
        "Time and candidate requests are means over the runs that reached the right decision "
        "(rollback for a regression, promotion for A/A), counted from the candidate's first request.",
        "",
        "## A/A (identical versions): false rollbacks",
        "",
        "| class | stable 10-s error Fano | policy | rolled back [95% CI] | promoted | paused | time to promote | "
        "candidate requests |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(outs: list[Outcome], phase: str) -> tuple[str, str]:
        sel = [o for o in outs if o.phase == phase]
        if not sel:
            return "-", "-"
        return f"{np.mean([o.seconds for o in sel]):.0f} s", f"{np.mean([o.served for o in sel]):.0f}"

    for cls_name in fanos:
        for policy in POLICIES:
            outs = results.get((policy, cls_name, "A/A"))
            if not outs:
                continue
            n = len(outs)
            k = sum(o.phase == "RolledBack" for o in outs)
            lo, hi = wilson(k, n)
            pr = sum(o.phase == "Promoted" for o in outs) / n
            pa = sum(o.phase == "Paused" for o in outs) / n
            t, c = cell(outs, "Promoted")
            flag = " **over alpha**" if policy.startswith("sequential") and lo > 0.05 else (
                " (CI reaches alpha)" if policy.startswith("sequential") and hi > 0.05 else "")
            lines.append(f"| {cls_name} | {fanos[cls_name]:.2g} | {policy} | {100 * k / n:.1f}% [{100 * lo:.1f}, "
                         f"{100 * hi:.1f}]{flag} | {100 * pr:.1f}% | {100 * pa:.1f}% | {t} | {c} |")
    lines += ["", "## Regressions: power, time to decision, candidate requests", "",
              "| class | scenario | policy | rolled back [95% CI] | promoted | paused | time to rollback | "
              "candidate requests | requests vs Wald SPRT |", "|---|---|---|---|---|---|---|---|---|"]
    for cls_name in CLASSES:
        for scenario in SCENARIOS:
            if scenario == "A/A":
                continue
            sprt = results.get(("wald-sprt", cls_name, scenario))
            sprt_req = np.mean([o.served for o in sprt if o.phase == "RolledBack"]) if sprt and any(
                o.phase == "RolledBack" for o in sprt) else float("nan")
            for policy in POLICIES:
                outs = results.get((policy, cls_name, scenario))
                if not outs:
                    continue
                n = len(outs)
                k = sum(o.phase == "RolledBack" for o in outs)
                lo, hi = wilson(k, n)
                pr = sum(o.phase == "Promoted" for o in outs) / n
                pa = sum(o.phase == "Paused" for o in outs) / n
                t, c = cell(outs, "RolledBack")
                ratio = "-"
                if policy != "wald-sprt" and c != "-" and not math.isnan(sprt_req) and sprt_req > 0:
                    ratio = f"{float(c) / sprt_req:.2f}x"
                lines.append(f"| {cls_name} | {scenario} | {policy} | {100 * k / n:.1f}% [{100 * lo:.1f}, "
                             f"{100 * hi:.1f}] | {100 * pr:.1f}% | {100 * pa:.1f}% | {t} | {c} | {ratio} |")
    lines += [
        "",
        "Wald's SPRT knows the true effect and tests the error counts with the same alpha and beta; "
        "it is the limit, not a usable policy (it cannot be run without knowing the effect). For the latency "
        "scenario it has no row. Baselines: 'paused' for Flagger means the horizon "
        f"({HORIZON_S} s) ended with the canary still retrying its checks.",
    ]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
