"""One view of a model's state, from which every report renders: `status`, `history`,
`status --watch`, the GitHub job summary's table, notifications and the demo.

Decisions are read from what the engine recorded (``StepRecord``: outcome, times,
reason, the deciding measurements), never re-derived from free text or from the step
index: a step skipped by ``promote --full`` shows as skipped, a ``dry_run`` metric that
failed never shows as deciding. The registry gate, checked before the plan, is row 0."""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.state import MeasurementRecord, ModelState, Phase, RolloutState, StepRecord
from rollout.steps import TrafficStep

# The result of a step, as reports name it. Outcomes recorded by the engine, then the
# states of the step the rollout is at (or ended at), then "not_reached".
RESULT_TEXT = {
    "passed": "passed", "failed": "failed", "inconclusive": "inconclusive", "skipped": "skipped",
    "passed_by_operator": "passed by operator", "running": "running", "paused": "paused",
    "rolled_back": "rolled back", "aborted": "aborted", "deploy_failed": "failed", "not_reached": "not reached",
}
_ENDED_AT = {Phase.PAUSED: "paused", Phase.ROLLED_BACK: "rolled_back", Phase.FAILED: "deploy_failed",
             Phase.ABORTED: "aborted", Phase.PROGRESSING: "running"}


@dataclass(frozen=True)
class StepView:
    index: int  # 1-based, as people count
    kind: str
    step: str
    weight: int  # the candidate's share while the step ran
    mirror: int
    result: str  # a key of RESULT_TEXT
    reason: str = ""
    by: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    metrics: dict[str, MeasurementRecord] = field(default_factory=dict)  # latest of each metric in the step
    deciding: tuple[MeasurementRecord, ...] = ()

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def result_text(self) -> str:
        return RESULT_TEXT[self.result]


@dataclass(frozen=True)
class RolloutView:
    id: str
    strategy: str
    phase: Phase
    stable: str | None
    candidate: str
    step: int  # 1-based index of the current step (or the number of steps once done)
    steps: int
    current_step: str | None
    weight: int
    mirror: int
    reason: str
    started_at: float
    finished_at: float | None
    measurements: int
    latest: tuple[MeasurementRecord, ...]  # the newest measurement of each metric
    rows: tuple[StepView, ...]
    deciding: tuple[MeasurementRecord, ...]  # what decided a failed or inconclusive outcome
    request: str | None = None

    @property
    def active(self) -> bool:
        return self.phase.active

    @property
    def decided_by(self) -> tuple[MeasurementRecord, ...]:
        """What the outcome rests on: the measurements that failed (or were inconclusive),
        else those that passed the last analysis step."""
        if self.deciding:
            return self.deciding
        return next((row.deciding for row in reversed(self.rows) if row.deciding), ())


def describe_measurement(m: MeasurementRecord) -> str:
    return f"{m.metric}={'-' if m.value is None else f'{m.value:.4g}'} ({m.verdict}: {m.reason})"


@dataclass(frozen=True)
class ModelView:
    model: str
    stable: str | None
    previous: tuple[str, ...]
    rollout: RolloutView | None
    history: tuple[RolloutView, ...]  # the active rollout first (if any), then finished ones, newest first


def latest_measurements(r: RolloutState) -> list[MeasurementRecord]:
    """The newest measurement of each metric: what the last decision was made on."""
    latest: dict[str, MeasurementRecord] = {}
    for m in r.measurements:
        latest[m.metric] = m
    return list(latest.values())


def _step_metrics(r: RolloutState, index: int) -> dict[str, MeasurementRecord]:
    """The newest of each metric measured in step ``index``, the candidate's when both were."""
    latest: dict[str, MeasurementRecord] = {}
    for m in r.step_measurements(index):
        prev = latest.get(m.metric)
        if prev is None or m.version == r.candidate.version or prev.version != r.candidate.version:
            latest[m.metric] = m
    return latest


def _started_at(r: RolloutState) -> dict[int, float]:
    started: dict[int, float] = {}
    for e in r.events:
        if e.kind == "step" and e.step_index is not None:
            started.setdefault(e.step_index, e.at)
    return started


def _before_plan(r: RolloutState) -> list[StepView]:
    """Checks recorded before the plan's first step (the registry gate), as row 0: its
    metrics are the rule checks, each with the candidate's and the stable's value."""
    out = []
    for rec in r.steps:
        if rec.index < 0:
            out.append(StepView(index=0, kind=rec.kind, step=rec.step, weight=0, mirror=0, result=rec.outcome,
                                reason=rec.reason, by=rec.by, started_at=rec.started_at, ended_at=rec.ended_at,
                                # one per metric; a failed rule wins over a passed one on the same metric
                                metrics={m.metric: m for m in sorted(rec.deciding, key=lambda m: m.verdict == "fail")},
                                deciding=tuple(rec.deciding)))
    return out


def step_views(r: RolloutState) -> list[StepView]:
    records: dict[int, StepRecord] = {}
    for rec in r.steps:
        records[rec.index] = rec  # the last attempt of each step
    started = _started_at(r)
    # A rejected rollout ended before its plan: every step of it is "not reached".
    ended_normally = r.phase in (Phase.PROMOTED, Phase.COMPLETED, Phase.REJECTED)
    out = _before_plan(r)
    weight = mirror = 0
    for i, step in enumerate(r.plan):
        if isinstance(step, TrafficStep):
            weight, mirror = step.weight, step.mirror
        rec = records.get(i)
        if i == r.step_index and not ended_normally:
            result = _ENDED_AT[r.phase]
            reason = r.reason
        elif rec is not None:
            result, reason = rec.outcome, rec.reason
        elif i < r.step_index:
            result, reason = "passed", ""  # a state written before steps were recorded
        else:
            result, reason = "not_reached", ""
        start = rec.started_at if rec is not None and rec.started_at is not None else started.get(i)
        end = rec.ended_at if rec is not None else (r.finished_at if i == r.step_index and start is not None else None)
        out.append(StepView(index=i + 1, kind=step.kind, step=step.describe(), weight=weight, mirror=mirror,
                            result=result, reason=reason, by=rec.by if rec else None, started_at=start, ended_at=end,
                            metrics=_step_metrics(r, i), deciding=tuple(rec.deciding) if rec else ()))
    return out


def rollout_view(r: RolloutState) -> RolloutView:
    step = r.current_step()
    deciding = tuple(m for rec in r.steps if rec.outcome in ("failed", "inconclusive") for m in rec.deciding)
    return RolloutView(
        id=r.id, strategy=r.strategy, phase=r.phase, stable=r.stable.version if r.stable else None,
        candidate=r.candidate.version, step=min(r.step_index + 1, len(r.plan)), steps=len(r.plan),
        current_step=step.describe() if step else None, weight=r.traffic.weight, mirror=r.traffic.mirror,
        reason=r.reason, started_at=r.started_at, finished_at=r.finished_at, measurements=len(r.measurements),
        latest=tuple(latest_measurements(r)), rows=tuple(step_views(r)), deciding=deciding, request=r.request,
    )


def model_view(ms: ModelState) -> ModelView:
    active = [ms.rollout] if ms.rollout is not None and ms.rollout.phase.active else []
    return ModelView(
        model=ms.model, stable=ms.stable.version if ms.stable else None,
        previous=tuple(p.version for p in ms.previous),
        rollout=rollout_view(ms.rollout) if ms.rollout is not None else None,
        history=tuple(rollout_view(r) for r in active + ms.history),
    )
