"""Judges and the runner's rules, with a scripted provider (no servers)."""

from __future__ import annotations

import pytest

from rollout.analysis import promql
from rollout.analysis.base import Measurement, QueryContext, Status, Verdict
from rollout.analysis.judges import CompareJudge, ThresholdJudge, make_judge
from rollout.analysis.prometheus import PrometheusProvider
from rollout.analysis.runner import AnalysisRunner
from rollout.analysis.sequential import SequentialJudge
from rollout.spec import CompareJudgeSpec, MetricSpec, SequentialJudgeSpec, ThresholdJudgeSpec


def ctx(version: str = "v2", model: str = "iris", weight: int = 10, mirror: int = 0) -> QueryContext:
    return QueryContext(model=model, version=version, stable="v1", candidate="v2", window_s=60, weight=weight,
                        mirror=mirror)


# ------------------------------------------------------------------ PromQL injection


@pytest.mark.parametrize("evil", ['v1"} or vector(1) #', 'v1",version=~".*', "v1\\", "v1\n", "v1}", "v1'", "",
                                  "v1 or up", "../v1", "v1`"])
def test_version_that_could_leave_a_label_matcher_is_refused(evil: str) -> None:
    with pytest.raises(promql.UnsafeLabelValue):
        promql.render('up{version="{{version}}"}', ctx(version=evil))


@pytest.mark.parametrize("evil", ['iris"} or vector(1) #', "Iris\"", "iris=~"])
def test_model_name_injection_is_refused(evil: str) -> None:
    with pytest.raises(promql.UnsafeLabelValue):
        promql.render('up{model="{{model}}"}', ctx(model=evil))


def test_injection_attempt_becomes_a_provider_error_and_no_query_is_sent() -> None:
    # Port 1 is closed: were a query sent, the error would say "unreachable".
    m = PrometheusProvider("http://127.0.0.1:1").query("pack:istio/error_rate", ctx(version='v1"} or vector(1) #'))
    assert m.status is Status.ERROR and "not allowed in a PromQL query" in m.error


def test_escaping_is_applied_to_quoted_and_regex_contexts() -> None:
    assert promql.escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert promql.render('x{a="{{version}}",b=~"{{version_re}}"}', ctx(version="v1.0")) == 'x{a="v1.0",b=~"v1\\\\.0"}'
    assert promql.render("rate(x[{{ interval }}])", ctx()) == "rate(x[60s])"
    with pytest.raises(KeyError):
        promql.render("{{secret}}", ctx())


# ------------------------------------------------------------------ threshold / compare


def test_threshold_bounds_are_inclusive() -> None:
    j = ThresholdJudge(ThresholdJudgeSpec(max=0.02))
    assert j.decide("e", {"candidate": Measurement.of(0.02)}, ctx()).verdict is Verdict.PASS
    assert j.decide("e", {"candidate": Measurement.of(0.0201)}, ctx()).verdict is Verdict.FAIL
    j = ThresholdJudge(ThresholdJudgeSpec(min=0.99))
    assert j.decide("s", {"candidate": Measurement.of(0.98)}, ctx()).verdict is Verdict.FAIL


def test_compare_relative_and_absolute_and_higher_is_better() -> None:
    j = CompareJudge(CompareJudgeSpec(max_relative_increase=0.1))
    both = lambda c, s: {"candidate": Measurement.of(c), "stable": Measurement.of(s)}  # noqa: E731
    assert j.decide("p99", both(109, 100), ctx()).verdict is Verdict.PASS
    assert j.decide("p99", both(111, 100), ctx()).verdict is Verdict.FAIL
    # stable at 0 errors: the relative allowance is 0, an absolute floor makes it usable
    j = CompareJudge(CompareJudgeSpec(max_relative_increase=0.1, max_absolute_increase=0.001))
    assert j.decide("e", both(0.0005, 0.0), ctx()).verdict is Verdict.PASS
    j = CompareJudge(CompareJudgeSpec(max_relative_increase=0.01, higher_is_better=True))
    assert j.decide("acc", both(0.90, 0.95), ctx()).verdict is Verdict.FAIL
    assert j.decide("acc", both(0.99, 0.95), ctx()).verdict is Verdict.PASS


# ------------------------------------------------------------------ sequential (more in test_sequential.py)


def counts(n: float, bad: float) -> Measurement:
    return Measurement.of(bad / n if n else None, {"requests": n, "errors": bad})


NO_WARMUP = dict(warmup_s=0)


def test_sequential_fails_a_clearly_worse_candidate_with_final_evidence() -> None:
    j = SequentialJudge(SequentialJudgeSpec(alpha=0.05, **NO_WARMUP))
    d = j.decide("errors", {"candidate": counts(1000, 50), "stable": counts(9000, 90)}, ctx(weight=10))
    assert d.verdict is Verdict.FAIL and d.final
    assert "50/1000" in d.reason and "90/9000" in d.reason


def test_sequential_passes_a_clearly_good_candidate_early() -> None:
    j = SequentialJudge(SequentialJudgeSpec(alpha=0.05, early_pass_effect=1.0, **NO_WARMUP))
    d = j.decide("errors", {"candidate": counts(5000, 40), "stable": counts(5000, 100)}, ctx(weight=50))
    assert d.verdict is Verdict.PASS and d.final
    assert "smallest detectable increase +" in d.reason


def test_sequential_without_counts_is_inconclusive() -> None:
    j = SequentialJudge(SequentialJudgeSpec(**NO_WARMUP))
    no_counts = {"candidate": Measurement.of(0.1), "stable": Measurement.of(0.1)}
    assert j.decide("e", no_counts, ctx()).verdict is Verdict.INCONCLUSIVE


def test_sequential_in_a_preview_with_no_candidate_traffic_is_inconclusive() -> None:
    j = SequentialJudge(SequentialJudgeSpec(**NO_WARMUP))
    d = j.decide("e", {"candidate": counts(0, 0), "stable": counts(1000, 10)}, ctx(weight=0))
    assert d.verdict is Verdict.INCONCLUSIVE and "none (too little data)" in d.reason


# ------------------------------------------------------------------ runner rules


class Scripted:
    name = "scripted"

    def __init__(self, *outcomes: Measurement) -> None:
        self.outcomes = list(outcomes)

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        return self.outcomes.pop(0)


def run(metric: MetricSpec, *outcomes: Measurement, deadline_after: int | None = None):
    runner = AnalysisRunner([metric], {"scripted": Scripted(*outcomes)})
    records, verdict = [], None
    for tick in range(len(outcomes)):
        records += runner.measure((metric.name,), ctx(), 0, tick, float(tick))
        at_deadline = tick == (deadline_after if deadline_after is not None else len(outcomes) - 1)
        verdict = runner.evaluate((metric.name,), records, at_deadline)
        if verdict is not None:
            return verdict, records
    return verdict, records


def metric(**kw) -> MetricSpec:
    base = dict(name="err", provider="scripted", query="q", judge=ThresholdJudgeSpec(max=0.05))
    return MetricSpec(**{**base, **kw})


def test_failure_limit_tolerates_n_and_fails_on_the_n_plus_first() -> None:
    bad = Measurement.of(0.5)
    v, records = run(metric(failure_limit=2), bad, bad, bad, Measurement.of(0.0))
    assert v.verdict is Verdict.FAIL and len(records) == 3
    v, _ = run(metric(failure_limit=2), bad, bad, Measurement.of(0.0))
    assert v.verdict is Verdict.PASS


@pytest.mark.parametrize("policy,expected", [("inconclusive", Verdict.INCONCLUSIVE), ("fail", Verdict.FAIL),
                                             ("pass", Verdict.PASS)])
def test_no_data_means_what_on_no_data_says(policy: str, expected: Verdict) -> None:
    v, records = run(metric(on_no_data=policy), Measurement.no_data("empty vector"))
    assert v.verdict is expected and records[0].status == "no_data"


def test_provider_errors_never_pass_and_never_fail_the_candidate() -> None:
    err = Measurement.failed("Prometheus at http://x is unreachable")
    v, _ = run(metric(consecutive_error_limit=1), Measurement.of(0.0), err, err)
    assert v.verdict is Verdict.INCONCLUSIVE and "consecutive_error_limit" in v.reason
    v, _ = run(metric(consecutive_error_limit=5), Measurement.of(0.0), err)  # deadline on an error
    assert v.verdict is Verdict.INCONCLUSIVE


def test_dry_run_metrics_are_recorded_but_never_decide() -> None:
    v, records = run(metric(dry_run=True), Measurement.of(0.9))
    assert v.verdict is Verdict.PASS and records[0].verdict == "fail" and records[0].dry_run


def test_a_final_sequential_failure_ends_the_step_whatever_the_failure_limit() -> None:
    m = metric(failure_limit=3, judge=SequentialJudgeSpec(warmup_s=0))
    runner = AnalysisRunner([m], {"scripted": Scripted(counts(1000, 60), counts(9000, 90))})
    records = runner.measure(("err",), ctx(weight=10), 0, 0, 0.0)
    assert records[0].final and records[0].detail["candidate.requests"] == 1000
    assert runner.evaluate(("err",), records, at_deadline=False).verdict is Verdict.FAIL


def test_make_judge_lists_known_judges() -> None:
    class Fake:
        type = "bayesian"

    with pytest.raises(Exception, match="sequential"):
        make_judge(Fake())


# ------------------------------------------------------------------ lint


def _spec(metric: dict):
    from rollout.spec import parse_spec

    return parse_spec({"model": "iris", "registry": {"type": "git", "url": "/x"},
                       "analysis": {"prometheus": {"url": "http://127.0.0.1:9"}, "metrics": [metric]}})


@pytest.mark.parametrize("metric,message", [
    ({"query": "pack:linkerd/error_rate", "judge": {"type": "threshold", "max": 1}}, "known: local-router"),
    ({"query": "pack:mlserver/latency_p99_ms", "judge": {"type": "threshold", "max": 1}}, "mean only"),
    ({"query": 'up{v="{{ver}}"}', "judge": {"type": "threshold", "max": 1}}, "unknown placeholder"),
    ({"query": "pack:istio/latency_p99_ms", "judge": {"type": "sequential"}}, "counting query"),
])
def test_lint_rejects_bad_pack_queries_naming_the_field(metric: dict, message: str) -> None:
    from rollout.app import lint
    from rollout.errors import SpecError

    with pytest.raises(SpecError, match=message) as exc:
        lint(_spec({"name": "m", "provider": "prometheus", **metric}))
    assert "analysis.metrics.m" in str(exc.value)


def test_lint_accepts_a_sequential_pack_metric() -> None:
    from rollout.app import lint

    assert lint(_spec({"name": "m", "provider": "prometheus", "query": "pack:istio/slow_ratio>250ms",
                       "judge": {"type": "sequential", "alpha": 0.01}}))
