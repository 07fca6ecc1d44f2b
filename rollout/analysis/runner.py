"""Runs the measurements of an analysis step and folds them into one verdict.

The rules, written once (the spec's field descriptions say the same):
- a provider error is never a pass and never a failure of the candidate; more than
  ``consecutive_error_limit`` in a row makes the step inconclusive;
- no data means what ``on_no_data`` says (inconclusive by default);
- ``failure_limit: N`` tolerates N failed measurements; the N+1th fails the step at once;
  a failure the judge calls final (a sequential test that crossed its boundary) fails
  it at once whatever the limit;
- a metric passes at the end of the step only if its last measurement passed (or
  failed within the limit); ``dry_run`` metrics are recorded and never decide;
- a judge may end the step early when its evidence is final (sequential tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from rollout.analysis.base import Measurement, MetricProvider, QueryContext, Status, Verdict
from rollout.analysis.judges import make_judge
from rollout.errors import SpecError
from rollout.spec import MetricSpec
from rollout.state import MeasurementRecord


def carried(history: list[MeasurementRecord], metric: str, step_index: int) -> dict[str, float]:
    """The "carry." values of the latest earlier step's last record of ``metric`` that has them
    (a judge folds each step into what it carries, so only the latest counts)."""
    best: MeasurementRecord | None = None
    for r in reversed(history):  # records are in time order: the latest earlier step's last one
        if r.metric == metric and r.step_index < step_index and any(k.startswith("carry.") for k in r.detail):
            if best is None or r.step_index > best.step_index:
                best = r
            if best.step_index == step_index - 1:
                break
    return {k: v for k, v in best.detail.items() if k.startswith("carry.")} if best else {}


def earlier_counts(history: list[MeasurementRecord], metric: str, step_index: int, tick: int,
                   step_began: float) -> tuple[tuple[float, tuple[float, float, float, float]], ...]:
    """This step's earlier cumulative counts of ``metric`` that a sequential judge recorded,
    from this attempt at the step only (a step measured again after a pause starts afresh)."""
    keys = ("seq.c.requests", "seq.c.bad", "seq.s.requests", "seq.s.bad")
    return tuple((r.detail["seq.window_s"], tuple(r.detail[k] for k in keys))  # type: ignore[misc]
                 for r in history
                 if r.metric == metric and r.step_index == step_index and r.tick < tick
                 and "seq.window_s" in r.detail and all(k in r.detail for k in keys)
                 and abs((r.at - r.detail["seq.window_s"]) - step_began) < 1.0)


@dataclass(frozen=True)
class StepVerdict:
    verdict: Verdict
    reason: str


class AnalysisRunner:
    def __init__(self, metrics: list[MetricSpec], providers: Mapping[str, MetricProvider]) -> None:
        self.metrics = {m.name: m for m in metrics}
        self.providers = providers
        for m in metrics:
            if m.provider not in providers:
                raise SpecError(
                    f"analysis.metrics.{m.name}.provider: unknown provider {m.provider!r}; "
                    f"known: {', '.join(sorted(providers))}"
                )

    def measure(self, names: tuple[str, ...], ctx: QueryContext, step_index: int, tick: int, at: float,
                history: list[MeasurementRecord] | None = None) -> list[MeasurementRecord]:
        """``history``: this rollout's earlier records, whose "carry." evidence judges continue from."""
        past = history or []
        return [self._measure_one(self.metrics[n], replace(ctx, carried=carried(past, n, step_index),
                                                           earlier=earlier_counts(past, n, step_index, tick,
                                                                                  at - ctx.window_s)),
                                  step_index, tick, at) for n in names]

    def _measure_one(self, metric: MetricSpec, ctx: QueryContext, step_index: int, tick: int, at: float) -> MeasurementRecord:
        judge = make_judge(metric.judge, metric.version)
        provider = self.providers[metric.provider]
        measured: dict[str, Measurement] = {}
        for role in judge.roles:
            version = ctx.candidate if role == "candidate" else ctx.stable
            if version is None:
                measured[role] = Measurement.no_data(f"there is no {role} version")
                continue
            try:
                measured[role] = provider.query(metric.query, replace(ctx, version=version))
            except Exception as exc:  # a provider bug must not look like a bad candidate
                # Only the type: an arbitrary exception's text may hold a request's headers.
                measured[role] = Measurement.failed(f"provider raised {type(exc).__name__}", kind="provider_bug")
        main_role = judge.roles[0]
        base = dict(
            metric=metric.name, step_index=step_index, tick=tick, at=at,
            version=(ctx.candidate if main_role == "candidate" else ctx.stable) or "",
            value=measured[main_role].value,
            stable_value=measured["stable"].value if "stable" in measured and main_role != "stable" else None,
            dry_run=metric.dry_run,
            detail={f"{role}.{k}": float(v) for role, m in measured.items() for k, v in m.detail.items()},
        )
        errors = [role for role, m in measured.items() if m.status is Status.ERROR]
        if errors:
            text = "; ".join(f"{role}: {measured[role].error}" for role in errors)
            return MeasurementRecord(status="error", verdict="error", kind=measured[errors[0]].kind or "error",
                                     reason=f"{metric.name}: provider {metric.provider} error ({text})", **base)
        empty = [role for role, m in measured.items() if m.status is Status.NO_DATA]
        if empty:
            why = "; ".join(f"{r}: {measured[r].error}" for r in empty if measured[r].error)
            reason = f"{metric.name}: no data for {', '.join(empty)}" + (f" ({why})" if why else "")
            verdict = metric.on_no_data
            return MeasurementRecord(status="no_data", verdict=verdict, kind=measured[empty[0]].kind or "empty",
                                     reason=f"{reason}; on_no_data={verdict}", **base)
        decision = judge.decide(metric.name, measured, ctx)
        base["detail"] = {**base["detail"], **{k: float(v) for k, v in decision.detail.items()}}
        return MeasurementRecord(status="value", verdict=decision.verdict.value, reason=decision.reason,
                                 final=decision.final, **base)

    def evaluate(self, names: tuple[str, ...], records: list[MeasurementRecord], at_deadline: bool) -> StepVerdict | None:
        """The step's verdict so far; None means: keep measuring."""
        deciding = [self.metrics[n] for n in names if not self.metrics[n].dry_run]
        by_metric = {m.name: [r for r in records if r.metric == m.name] for m in deciding}
        for m in deciding:
            failures = [r for r in by_metric[m.name] if r.verdict == "fail"]
            if failures and failures[-1].final and failures[-1] is by_metric[m.name][-1]:
                return StepVerdict(Verdict.FAIL, f"{failures[-1].reason} (final: the evidence is already enough)")
            if len(failures) > m.failure_limit:
                return StepVerdict(Verdict.FAIL, f"{failures[-1].reason} ({len(failures)} failed measurement(s), "
                                                 f"failure_limit {m.failure_limit})")
        for m in deciding:
            streak = 0
            for r in reversed(by_metric[m.name]):
                if r.verdict != "error":
                    break
                streak += 1
            if streak > m.consecutive_error_limit:
                return StepVerdict(Verdict.INCONCLUSIVE, f"{by_metric[m.name][-1].reason}: {streak} errors in a row "
                                                         f"> consecutive_error_limit {m.consecutive_error_limit}")
        lasts = {m.name: (by_metric[m.name][-1] if by_metric[m.name] else None) for m in deciding}
        if deciding and all(r is not None and r.verdict == "pass" and r.final for r in lasts.values()):
            return StepVerdict(Verdict.PASS, "; ".join(r.reason for r in lasts.values() if r) + " (evidence sufficient early)")
        if not at_deadline:
            return None
        unsure = []
        for name, r in lasts.items():
            if r is None:
                unsure.append(f"{name}: not measured")
            elif r.verdict in ("inconclusive", "error"):
                unsure.append(r.reason)
        if unsure:
            return StepVerdict(Verdict.INCONCLUSIVE, "; ".join(unsure))
        return StepVerdict(Verdict.PASS, "; ".join(r.reason for r in lasts.values() if r) or "no deciding metrics")
