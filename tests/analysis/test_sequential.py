"""The sequential judge and the data it is fed: one test per bug of issue 8 (and issue 14's
analysis-data rows), each with the smallest case that showed it."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import mpmath
import numpy as np
import pytest

from rollout.analysis.base import Measurement, QueryContext, Status, Verdict
from rollout.analysis.judges import CompareJudge, ThresholdJudge
from rollout.analysis.prometheus import Credentials, PrometheusProvider, counter_delta
from rollout.analysis.runner import AnalysisRunner
from rollout.analysis.sequential import (FAIL_GRID, FAIL_WEIGHTS, Intervals, SequentialJudge, combined_log_e,
                                         log_e_buckets_greater, log_e_counts_greater, log_e_counts_less, log_e_srm)
from rollout.spec import CompareJudgeSpec, MetricSpec, SequentialJudgeSpec, ThresholdJudgeSpec

pytestmark = pytest.mark.timeout(120)


def ctx(weight: int = 10, window_s: float = 60.0, **kw) -> QueryContext:
    return QueryContext(model="iris", version="v2", stable="v1", candidate="v2", window_s=window_s, weight=weight, **kw)


def counts(n: float, bad: float) -> Measurement:
    return Measurement.of(bad / n if n else 0.0, {"requests": n, "errors": bad})


def pair(n_c: float, x_c: float, n_s: float, x_s: float) -> dict[str, Measurement]:
    return {"candidate": counts(n_c, x_c), "stable": counts(n_s, x_s)}


# ------------------------------------------------------------------ log space, against mpmath


def _reference_log_e(x_c: float, x_s: float, n_c: float, n_s: float, rho0: float) -> mpmath.mpf:
    mpmath.mp.dps = 60
    total = mpmath.mpf(0)
    for g, w in zip(FAIL_GRID, FAIL_WEIGHTS):
        rho_a = mpmath.mpf(rho0) * mpmath.mpf(float(g))
        th_a = n_c * rho_a / (n_c * rho_a + n_s)
        th_0 = n_c * mpmath.mpf(rho0) / (n_c * mpmath.mpf(rho0) + n_s)
        total += mpmath.mpf(float(w)) * (th_a / th_0) ** x_c * ((1 - th_a) / (1 - th_0)) ** x_s
    return mpmath.log(total)


@pytest.mark.parametrize("x_c,x_s,n_c,n_s", [
    (0, 100_000, 1_000_000, 9_000_000),  # a stable-only incident at 2,000 req/s: the old code gave -inf
    (13_000, 90_000, 1_000_000, 9_000_000),  # 1% -> 1.3% at 2,000 req/s
    (5, 45, 500, 4500),
    (400, 10, 1000, 1000),
])
def test_failure_evidence_is_finite_and_matches_a_60_digit_reference(x_c, x_s, n_c, n_s) -> None:
    iv = Intervals.of([(n_c, x_c, n_s, x_s)])
    got = log_e_counts_greater(iv, 1.0)
    want = float(_reference_log_e(x_c, x_s, n_c, n_s, 1.0))
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_pass_bucket_and_srm_evidence_stay_finite_at_extreme_counts() -> None:
    iv = Intervals.of([(1_000_000, 0, 9_000_000, 100_000)])
    for value in (log_e_counts_less(iv, 2.0), log_e_buckets_greater(iv, 1.0), log_e_srm(1e6, 9e6, 0.5)):
        assert math.isfinite(value)
    # the SRM Beta-mixture against a 60-digit reference
    mpmath.mp.dps = 60
    n_c, n_s, share, prior = 3000, 7000, 0.1, 50.0
    a, b = prior * share, prior * (1 - share)
    want = (mpmath.log(mpmath.beta(a + n_c, b + n_s)) - mpmath.log(mpmath.beta(a, b))
            - n_c * mpmath.log(share) - n_s * mpmath.log(1 - mpmath.mpf(share)))
    assert log_e_srm(n_c, n_s, share) == pytest.approx(float(want), rel=1e-9)


def test_a_step_that_favoured_the_candidate_carries_a_finite_number_not_a_floor() -> None:
    judge = SequentialJudge(SequentialJudgeSpec(warmup_s=0))
    d = judge.decide("e", pair(1_000_000, 0, 9_000_000, 100_000), ctx())
    assert all(math.isfinite(v) for v in d.detail.values())
    assert d.detail["carry.log_a"] < -1000  # evidence for the candidate, kept exactly, not floored at -50


# ------------------------------------------------------------------ exposure, not the configured weight


def test_a_replica_ratio_split_is_judged_on_what_each_version_served() -> None:
    """The judge is told 10%, the Service split by replicas gave the candidate 50%:
    identical versions pass (it used to be inconclusive: "sample ratio mismatch")."""
    judge = SequentialJudge(SequentialJudgeSpec(warmup_s=0))
    d = judge.decide("e", pair(50_000, 500, 50_000, 500), ctx(weight=10))
    assert d.verdict is Verdict.PASS
    assert "sample ratio mismatch" in d.reason and "served 50%" in d.reason  # shown, not a gate


def test_the_same_errors_fail_only_when_the_exposure_says_so() -> None:
    """50 errors each: with equal exposure that is no regression; with a 1:9 exposure it is."""
    judge = SequentialJudge(SequentialJudgeSpec(warmup_s=0))
    assert judge.decide("e", pair(5000, 50, 5000, 50), ctx(weight=10)).verdict is not Verdict.FAIL
    assert judge.decide("e", pair(1000, 50, 9000, 50), ctx(weight=10)).verdict is Verdict.FAIL


# ------------------------------------------------------------------ evidence across steps


class Cumulative:
    """A provider answering cumulative counts since the step began, from per-tick increments."""

    name = "cum"

    def __init__(self, steps: list[list[tuple[float, float, float, float]]]) -> None:
        self.steps = steps
        self.step = self.tick = 0

    def at(self, step: int, tick: int) -> None:
        self.step, self.tick = step, tick

    def query(self, query: str, c: QueryContext) -> Measurement:
        rows = np.asarray(self.steps[self.step][: self.tick + 1]).sum(axis=0)
        n, x = (rows[0], rows[1]) if c.version == "v2" else (rows[2], rows[3])
        return counts(float(n), float(x))


def run_steps(spec: SequentialJudgeSpec, steps: list[list[tuple[float, float, float, float]]],
              interval_s: float = 10.0) -> list[tuple[Verdict, str]]:
    """Each step measured every interval until the runner decides (deadline: its last tick)."""
    m = MetricSpec(name="e", provider="cum", query="errors", judge=spec)
    provider = Cumulative(steps)
    runner = AnalysisRunner([m], {"cum": provider})
    history, outcomes = [], []
    for step, ticks in enumerate(steps):
        records = []
        for tick in range(len(ticks)):
            provider.at(step, tick)
            at = 1000.0 * step + (tick + 1) * interval_s  # the engine's clock: step start + window
            fresh = runner.measure(("e",), ctx(window_s=(tick + 1) * interval_s), step, tick, at,
                                   history=history + records)
            records += fresh
            verdict = runner.evaluate(("e",), records, at_deadline=tick == len(ticks) - 1)
            if verdict is not None:
                outcomes.append((verdict.verdict, verdict.reason))
                break
        history += records
        if outcomes[-1][0] is not Verdict.PASS:
            break
    return outcomes


def test_pass_evidence_is_not_carried_a_stable_incident_then_a_worse_candidate_is_caught() -> None:
    """Step 1: an incident on stable only (the candidate looks great) passes early.
    Step 2: the candidate has twice stable's errors: it must fail, not ride on step 1."""
    incident = [(1000, 5, 9000, 900)] * 6
    worse = [(2500, 50, 2500, 25)] * 30  # 2% vs 1% at 50/50
    outcomes = run_steps(SequentialJudgeSpec(warmup_s=0), [incident, worse])
    assert outcomes[0][0] is Verdict.PASS
    assert outcomes[1][0] is Verdict.FAIL, outcomes


def test_after_a_stable_incident_at_2000_rps_a_small_regression_is_still_caught() -> None:
    """The old judge's step-1 evidence underflowed to -inf, was floored at -50 and carried:
    the fail side never recovered and 1% -> 1.3% at 2,000 req/s was promoted."""
    incident = [(2000, 20, 18000, 2000)] * 3  # stable fails 11% for 30 s; the candidate is fine
    regression = [(10_000, 130, 10_000, 100)] * 18  # 1.3% vs 1% at 50/50, 2,000 req/s
    # no early pass: 1.3x is below the early-pass effect (a doubling), which may pass a step early by design
    outcomes = run_steps(SequentialJudgeSpec(warmup_s=0, early_pass_effect=None), [incident, regression])
    assert outcomes[0][0] is Verdict.PASS
    assert outcomes[1][0] is Verdict.FAIL, outcomes


def test_failure_evidence_carried_across_steps_adds_up() -> None:
    """Two steps each too weak to fail alone at 1.5x; together they fail."""
    spec = SequentialJudgeSpec(warmup_s=0, early_pass_effect=None, detectable_effect=1.0)
    step = [(1000, 15, 1000, 10)] * 6
    alone = run_steps(spec, [step])
    assert alone[0][0] is not Verdict.FAIL
    together = run_steps(spec, [step] * 4)
    assert together[-1][0] is Verdict.FAIL


def test_a_step_measured_again_after_a_pause_does_not_reuse_the_first_attempts_counts() -> None:
    from rollout.analysis.runner import earlier_counts
    from rollout.state import MeasurementRecord

    def rec(at: float, window: float, tick: int) -> MeasurementRecord:
        return MeasurementRecord(metric="e", step_index=3, tick=tick, at=at, version="v2", status="value",
                                 verdict="inconclusive", detail={"seq.window_s": window, "seq.c.requests": 10,
                                                                 "seq.c.bad": 1, "seq.s.requests": 90, "seq.s.bad": 1})

    first_attempt = [rec(110.0, 10.0, 0), rec(120.0, 20.0, 1)]  # began at 100
    second_attempt = [rec(510.0, 10.0, 0)]  # began at 500
    got = earlier_counts(first_attempt + second_attempt, "e", 3, tick=1, step_began=500.0)
    assert [w for w, _ in got] == [10.0]


def test_combined_evidence_is_an_average_over_restart_points() -> None:
    # Step 1 favoured the candidate enormously; step 2 alone still counts with its restart weight.
    now, _ = combined_log_e(log_e_step=10.0, log_carry=-5000.0, step_number=2)
    assert now == pytest.approx(math.log(math.exp(10.0) * (0.2 / 2) + (1 - 0.8 - 0.1)), rel=1e-9)


# ------------------------------------------------------------------ no pass without evidence


def test_a_low_traffic_step_is_inconclusive_at_its_deadline_not_passed() -> None:
    """1 req/s, 1% -> 5%: a minute at 10% is 6 candidate requests: nothing either way."""
    outcomes = run_steps(SequentialJudgeSpec(warmup_s=0), [[(1, 0, 9, 0)] * 5 + [(1, 0, 9, 1)]])
    assert outcomes[0][0] is Verdict.INCONCLUSIVE
    assert "smallest detectable increase none" in outcomes[0][1] and "not enough data to pass" in outcomes[0][1]


def test_a_step_passes_at_its_deadline_only_with_the_power_to_detect_the_configured_effect() -> None:
    judge = SequentialJudge(SequentialJudgeSpec(warmup_s=0, early_pass_effect=None, detectable_effect=1.0))
    thin = judge.decide("e", pair(500, 5, 4500, 45), ctx())
    rich = judge.decide("e", pair(20_000, 200, 20_000, 200), ctx(weight=50))
    assert thin.verdict is Verdict.INCONCLUSIVE and thin.detail.get("seq.detectable_increase", 99) > 1.0
    assert rich.verdict is Verdict.PASS and rich.detail["seq.detectable_increase"] <= 1.0
    assert f"+{100 * rich.detail['seq.detectable_increase']:.3g}%" in rich.reason


# ------------------------------------------------------------------ warm-up


def test_a_cold_candidate_is_not_rolled_back_for_its_warm_up() -> None:
    """5% errors in the candidate's first 30 s, then identical to stable."""
    cold = [(100, 5, 900, 9)] * 3 + [(100, 1, 900, 9)] * 9
    assert run_steps(SequentialJudgeSpec(warmup_s=0), [cold])[0][0] is Verdict.FAIL  # the bug, without warm-up
    outcome = run_steps(SequentialJudgeSpec(warmup_s=30), [cold])[0]
    assert outcome[0] is not Verdict.FAIL
    assert "warm-up: first 30s not judged (candidate 15/300" in outcome[1]


def test_warm_up_applies_to_the_first_analysis_step_only() -> None:
    judge = SequentialJudge(SequentialJudgeSpec(warmup_s=30))
    first = judge.decide("e", pair(100, 10, 900, 9), ctx(window_s=10))
    later = judge.decide("e", pair(100, 10, 900, 9), ctx(window_s=10, carried={"carry.log_a": 0.0, "carry.steps": 1}))
    assert first.verdict is Verdict.INCONCLUSIVE and "warming up" in first.reason
    assert later.verdict is Verdict.FAIL


# ------------------------------------------------------------------ anytime validity (A/A), both units


def _aa_false_rollbacks(unit: str, fano_k: float, runs: int, seed: int, pods: bool = False) -> float:
    """A 3-step rollout (10/25/50%, 36 ticks each) of identical versions, evidence checked at
    every tick, as the judge combines it; errors in bursts within each version when fano_k > 0
    (with ``pods``: per pod, 1 candidate pod against 9 stable pods)."""
    rng = np.random.default_rng(seed)
    spec = SequentialJudgeSpec(alpha=0.05, unit=unit)
    fail_at = -math.log(spec.alpha)
    crossed = 0
    for _ in range(runs):
        log_carry, failed = None, False
        for step, share in enumerate((0.1, 0.25, 0.5), start=1):
            rows = []
            for _tick in range(36):
                n = rng.poisson(1000)
                n_c = rng.binomial(n, share)
                rate_c = 0.01 * (1 + fano_k * (rng.random() < 0.06))
                rate_s = 0.01 * (1 + fano_k * (rng.binomial(9, 0.06) / 9 if pods else rng.random() < 0.06))
                rows.append((n_c, rng.binomial(n_c, rate_c), n - n_c, rng.binomial(n - n_c, rate_s)))
                iv = Intervals.of(rows)
                e = log_e_counts_greater(iv, 1.0) if unit == "requests" else log_e_buckets_greater(iv, 1.0)
                now, carry = combined_log_e(e, log_carry, step)
                if now >= fail_at:
                    failed = True
                    break
            if failed:
                break
            log_carry = carry
        crossed += failed
    return crossed / runs


def test_count_test_holds_alpha_on_poisson_traffic_looking_every_interval() -> None:
    assert _aa_false_rollbacks("requests", 0.0, runs=200, seed=1) <= 0.05


def test_bucket_test_holds_alpha_under_bursts_the_count_test_breaks() -> None:
    """Bursts that multiply a version's error rate by 10 for a whole interval, independently
    per version: the count test's false-rollback rate goes far over alpha, the bucket test's
    stays under it."""
    assert _aa_false_rollbacks("requests", 9.0, runs=120, seed=2) > 0.2
    assert _aa_false_rollbacks("buckets", 9.0, runs=120, seed=2) <= 0.05


def test_bucket_test_holds_alpha_when_one_candidate_pod_bursts_against_nine_stable_pods() -> None:
    assert _aa_false_rollbacks("requests", 9.0, runs=120, seed=3, pods=True) > 0.2
    assert _aa_false_rollbacks("buckets", 9.0, runs=120, seed=3, pods=True) <= 0.05


# ------------------------------------------------------------------ threshold and compare: minimum sample


def test_compare_on_a_handful_of_requests_is_not_enough_data() -> None:
    """The demo on a busy machine: a p99 of 13 requests rolled v2 back."""
    j = CompareJudge(CompareJudgeSpec(max_relative_increase=1.0))
    few = {"candidate": Measurement.of(900.0, {"requests": 13}), "stable": Measurement.of(40.0, {"requests": 400})}
    d = j.decide("latency-p99", few, ctx())
    assert d.verdict is Verdict.INCONCLUSIVE and "not enough data" in d.reason and "candidate 13" in d.reason
    many = {"candidate": Measurement.of(900.0, {"requests": 80}), "stable": Measurement.of(40.0, {"requests": 400})}
    assert j.decide("latency-p99", many, ctx()).verdict is Verdict.FAIL


def test_threshold_needs_its_minimum_sample_too_and_zero_turns_it_off() -> None:
    few = {"candidate": Measurement.of(0.5, {"requests": 10, "errors": 5})}
    assert ThresholdJudge(ThresholdJudgeSpec(max=0.05)).decide("e", few, ctx()).verdict is Verdict.INCONCLUSIVE
    assert ThresholdJudge(ThresholdJudgeSpec(max=0.05, min_requests=0)).decide("e", few, ctx()).verdict is Verdict.FAIL


# ------------------------------------------------------------------ Prometheus counts


def test_counter_delta_uses_scrapes_only_and_handles_resets_and_late_series() -> None:
    # no extrapolation: 3 scrapes 15 s apart, +10 each: 20, whatever the window's length
    assert counter_delta([(15, 100), (30, 110), (45, 120)], window_start=10, scrape_interval_s=15) == 20
    # a reset: 120 -> 5 counts 5 more
    assert counter_delta([(15, 100), (30, 120), (45, 5)], window_start=10, scrape_interval_s=15) == 25
    # a series that appears mid-window (first error of a version) started from 0
    assert counter_delta([(40, 3), (55, 4)], window_start=10, scrape_interval_s=15) == 4


class FakePrometheus:
    """A Prometheus HTTP API answering each query with what a rule says; records queries."""

    def __init__(self, rule) -> None:  # noqa: ANN001
        self.rule, self.queries = rule, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                q = parse_qs(urlsplit(self.path).query).get("query", [""])[0]
                outer.queries.append((q, dict(self.headers)))
                delay, body = outer.rule(q, dict(self.headers))
                time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakePrometheus":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def matrix(*series: list[tuple[float, str]]) -> dict:
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[t, v] for t, v in s]} for s in series]}}


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PROM_TOKEN", "tok-3f9a7c-secret")
    yield "tok-3f9a7c-secret"


def test_a_nan_error_series_is_no_data_not_zero_errors() -> None:
    """A NaN in the errors sub-query used to read as 0 errors and promote a 60%-error candidate."""
    now = time.time()

    def rule(q: str, h: dict) -> tuple[float, dict]:
        if 'code=~"5..|0"' in q:
            return 0, matrix([(now - 20, "NaN"), (now - 5, "NaN")])
        return 0, matrix([(now - 20, "100"), (now - 5, "200")])

    with FakePrometheus(rule) as prom:
        m = PrometheusProvider(prom.url, scrape_interval_s=15).query("pack:local-router/error_rate", ctx())
    assert m.status is Status.NO_DATA and m.kind == "nan" and "NaN" in m.error


@pytest.mark.parametrize("value,kind", [("NaN", "nan"), ("+Inf", "nan")])
def test_a_nan_or_infinite_value_is_no_data(value: str, kind: str) -> None:
    def rule(q: str, h: dict) -> tuple[float, dict]:
        return 0, {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), value]}]}}

    with FakePrometheus(rule) as prom:
        m = PrometheusProvider(prom.url).query("sum(up)", ctx())
    assert m.status is Status.NO_DATA and m.kind == kind and value in m.error


def test_zero_requests_and_an_empty_vector_are_told_apart() -> None:
    now = time.time()

    def rule(q: str, h: dict) -> tuple[float, dict]:
        if "v2" in q:
            return 0, matrix([(now - 58, "100"), (now - 5, "100")])
        return 0, matrix()

    with FakePrometheus(rule) as prom:
        p = PrometheusProvider(prom.url)
        zero = p.query("pack:local-router/error_rate", ctx())
        empty = p.query("pack:local-router/error_rate", QueryContext(model="iris", version="v1", stable="v1",
                                                                     candidate="v2", window_s=60, weight=10))
    assert zero.kind == "zero_requests" and "zero requests" in zero.error, zero
    assert empty.kind == "empty" and "no request series" in empty.error


def test_the_first_window_spans_two_scrape_intervals() -> None:
    """increase() over a window shorter than two scrapes is empty: it said "served no requests"."""
    with FakePrometheus(lambda q, h: (0, matrix())) as prom:
        PrometheusProvider(prom.url, scrape_interval_s=15).query("pack:local-router/error_rate", ctx(window_s=5))
        PrometheusProvider(prom.url, scrape_interval_s=15).query("rate(x[{{interval}}])", ctx(window_s=5))
    assert all("[30s]" in q for q, _ in prom.queries), prom.queries


def test_a_timeout_is_reported_as_a_timeout() -> None:
    with FakePrometheus(lambda q, h: (3.0, matrix())) as prom:
        m = PrometheusProvider(prom.url, timeout_s=0.5).query("pack:local-router/error_rate", ctx())
    assert m.status is Status.ERROR and m.kind == "timeout" and "did not answer within 0.5s" in m.error


def test_a_value_that_is_not_a_number_never_echoes_the_token(token_env: str) -> None:
    """A proxy answered with the request's headers as the value: the token reached 8 places."""
    def rule(q: str, h: dict) -> tuple[float, dict]:
        echoed = h.get("Authorization", "")
        return 0, {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [time.time(), echoed]}]}}

    with FakePrometheus(rule) as prom:
        p = PrometheusProvider(prom.url, Credentials(bearer_token_env="PROM_TOKEN"))
        m = p.query("sum(up)", ctx())
        record = AnalysisRunner([MetricSpec(name="m", provider="prometheus", query="sum(up)",
                                            judge=ThresholdJudgeSpec(max=1))],
                                {"prometheus": p}).measure(("m",), ctx(), 0, 0, 0.0)[0]
    assert any("Bearer" in h.get("Authorization", "") for _, h in prom.queries)  # it was sent
    assert m.status is Status.ERROR and m.kind == "bad_answer"
    assert token_env not in m.error and token_env not in record.model_dump_json()
    assert record.kind == "bad_answer"


def test_a_provider_that_raises_is_recorded_without_its_message() -> None:
    class Leaky:
        name = "leaky"

        def query(self, query: str, c: QueryContext) -> Measurement:
            raise RuntimeError("headers: Authorization: Bearer tok-leak")

    runner = AnalysisRunner([MetricSpec(name="m", provider="leaky", query="q", judge=ThresholdJudgeSpec(max=1))],
                            {"leaky": Leaky()})
    record = runner.measure(("m",), ctx(), 0, 0, 0.0)[0]
    assert record.status == "error" and "RuntimeError" in record.reason and "tok-leak" not in record.reason
