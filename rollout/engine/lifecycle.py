"""Beginnings and ends of a rollout: begin, first deployment, a rollback to an earlier
stable, finishing, ending (roll back / abort / fail), promote requests, and retiring old
versions whose delay has passed.

Every transition is saved as intent before the platform is touched: an ending is
recorded (``RolloutState.ending``) before traffic moves back, so a run killed halfway
through a rollback resumes the rollback and never re-applies the canary split."""

from __future__ import annotations

import uuid

from rollout.engine.run import Run
from rollout.errors import BadInput, DeployError, NotFound
from rollout.platforms.base import Traffic
from rollout.registry import gate as registry_gate
from rollout.registry.base import ModelVersion
from rollout.registry.gate import GateDecision
from rollout.spec import RolloutSpec
from rollout.state import (
    HISTORY_LIMIT,
    REGISTRY_GATE_INDEX,
    Ending,
    Event,
    MeasurementRecord,
    Phase,
    RolloutState,
    StepOutcome,
    StepRecord,
    TrafficRecord,
    VersionRecord,
)
from rollout.steps import AnalysisStep, GateStep, PauseStep, PromoteStep, ScaleDownStep, Step

INITIAL = "initial"  # strategy name of a first deployment
ROLLBACK = "rollback"  # strategy name of a rollback to an earlier stable


def _new_rollout(run: Run, candidate: VersionRecord, strategy: str, spec: RolloutSpec, plan: list[Step]) -> RolloutState:
    return RolloutState(id=uuid.uuid4().hex[:12], model=run.model, stable=run.ms.stable, candidate=candidate,
                        strategy=strategy, spec=spec.model_dump(mode="json"), plan=plan, started_at=run.now())


def gate_record(run: Run, version: ModelVersion, spec: RolloutSpec, decision: GateDecision) -> StepRecord:
    """The registry gate's decision as a step record: one measurement per rule checked
    (the candidate's value, the stable's, the rule's limit), the failed ones deciding a
    refusal, all of them a pass."""
    now = run.now()
    measured = [MeasurementRecord(
        metric=c.metric, step_index=REGISTRY_GATE_INDEX, tick=0, at=now, version=version.version,
        status="value" if c.candidate is not None else "no_data", value=c.candidate, stable_value=c.stable,
        verdict=("pass" if c.checked else "inconclusive") if c.ok else "fail", reason=c.detail, final=True,
        detail={c.rule: c.limit} if c.limit is not None else {}, kind="" if c.candidate is not None else "missing",
    ) for c in decision.checks]
    refused = not decision.ok
    return StepRecord(index=REGISTRY_GATE_INDEX, kind="registry_gate", step=registry_gate.describe(spec.registry.gate),
                      outcome="failed" if refused else "passed", started_at=now, ended_at=now,
                      reason=registry_gate.refusal(version.ref, decision) if refused else "every rule holds",
                      deciding=[m for m in measured if m.verdict == "fail"] if refused else measured)


def reject(run: Run, version: ModelVersion, spec: RolloutSpec, plan: list[Step], gate: StepRecord) -> None:
    """The registry gate refused ``version``: a rollout that ended before anything was
    deployed or moved, recorded (and archived) like any other ending, so history, status
    and the job summary show the metric, both values and the margin."""
    r = _new_rollout(run, VersionRecord.of(version), spec.strategy.type if plan else INITIAL, spec, plan)
    r.phase, r.reason, r.finished_at, r.steps = Phase.REJECTED, gate.reason, run.now(), [gate]
    if run.ms.rollout is not None and run.ms.rollout.phase.active:  # superseding was refused: that one goes on
        r.events.append(Event(at=r.finished_at, kind="rejected", message=r.reason))
        run.ms.history = [r, *run.ms.history][:HISTORY_LIMIT]
    else:
        run.ms.rollout = r
        run.emit("rejected", r.reason)
        run.ms.archive()
    run.save()


def begin(run: Run, version: ModelVersion, spec: RolloutSpec, plan: list[Step], gate: StepRecord | None = None) -> None:
    """Record a new rollout of ``version`` (nothing is deployed yet: the first reconcile does it)."""
    run.ms.retirements = [x for x in run.ms.retirements if x.version != version.version]
    run.ms.rollout = _new_rollout(run, VersionRecord.of(version), spec.strategy.type, spec, plan)
    if gate is not None:
        run.ms.rollout.steps.append(gate)
    stable = run.ms.stable
    run.emit("started", f"{spec.strategy.type} of {version.ref} against stable {stable.version if stable else '-'}: "
                        + ", ".join(s.describe() for s in plan))
    run.save()


def adopt(run: Run, served: Traffic, version: ModelVersion) -> None:
    """No state, but the platform already serves ``version`` (the state file was deleted
    or unusable): that version becomes the stable on record, so the next rollout is a
    normal one against it, with its analysis, never a first deployment at 100%."""
    run.ms.stable = VersionRecord.of(version)
    stray = (f"; the platform also sends {served.weight}% (mirror {served.mirror}%) to {served.candidate}, left by a "
             "rollout whose state is lost: this rollout's split replaces it"
             if served.candidate and served.candidate != version.version and (served.weight or served.mirror) else "")
    run.emit("adopted", f"{run.model} has no rollout state, but the platform already serves {version.ref}: adopted "
                        f"as the stable version{stray}")
    run.save()


def begin_initial(run: Run, version: ModelVersion, spec: RolloutSpec, gate: StepRecord | None = None) -> None:
    """A first deployment: no stable to compare with, so no analysis and no plan; the
    reconcile deploys it and ``finish`` makes it stable."""
    run.ms.rollout = _new_rollout(run, VersionRecord.of(version), INITIAL, spec, [])
    if gate is not None:
        run.ms.rollout.steps.append(gate)
    run.emit("started", f"first deployment of {version.ref}: no stable version yet, so no analysis")
    run.save()


def begin_rollback(run: Run, to: str | None, spec: RolloutSpec) -> None:
    """Record a rollback to an earlier stable (``to``, default the previous one): a
    promote of that version, then the current stable retired. Only versions that once
    were stable here qualify: a typo must not put an untested version on all traffic."""
    current = run.ms.stable
    if current is None:
        raise NotFound(f"model {run.model!r} has no stable version to roll back from")
    known = [p.version for p in run.ms.previous]
    if to is None:
        if not run.ms.previous:
            raise NotFound(f"model {run.model!r} has no previous stable version; stable is {current.version}")
        target = run.ms.previous[0]
    elif to == current.version:
        raise BadInput(f"{run.model}:{to} is already the stable version")
    elif to in known:
        target = next(p for p in run.ms.previous if p.version == to)
    else:
        raise NotFound(f"{run.model}:{to} was never stable here, so it cannot be rolled back to; previous "
                       f"stable versions: {', '.join(known) or 'none'} (to deploy another version, start a rollout of it)")
    run.ms.retirements = [x for x in run.ms.retirements if x.version != target.version]
    run.ms.rollout = _new_rollout(run, target, ROLLBACK, spec, [])
    run.rollout.requested_by = run.holder
    run.emit("started", f"rollback of {run.model} from {current.version} to {target.version}")
    run.save()


def finish(run: Run) -> None:
    """The plan ran to its end. A first deployment and a rollback to an earlier stable
    have no plan: their promotion (and the retirement of the version rolled back from)
    happens here, intent first like any promote step."""
    from rollout.engine.executors import promote, scale_down

    if run.rollout.strategy in (INITIAL, ROLLBACK):
        promote.execute(PromoteStep(), run)
        if run.rollout.strategy == ROLLBACK:
            scale_down.execute(ScaleDownStep(version="previous"), run)
    r = run.rollout
    now = run.now()
    if r.strategy == ROLLBACK:
        assert r.stable is not None
        r.phase = Phase.ROLLED_BACK
        r.reason = (f"rolled back from {r.stable.version} to {r.candidate.version} by {r.requested_by or run.holder}; "
                    f"100% of traffic on {r.candidate.version} {now - r.started_at:.3f}s after the command")
        kind = "rolled_back"
    elif r.strategy == INITIAL:
        r.phase = Phase.PROMOTED
        r.reason = f"{run.model}:{r.candidate.version} deployed as the first stable version"
        kind = "promoted"
    elif r.promoted:
        r.phase, kind = Phase.PROMOTED, "promoted"
        r.reason = f"{r.candidate.version} promoted after {len(r.plan)} steps"
    else:
        r.phase, kind = Phase.COMPLETED, "completed"
        r.reason = (f"{r.candidate.version} passed and was discarded as planned; "
                    f"{r.stable.version if r.stable else '-'} stays stable")
    r.finished_at, r.requested_by = now, None
    run.emit(kind, r.reason)
    run.ms.archive()
    run.save()


def end(run: Run, phase: Phase, reason: str, retire_candidate: bool) -> None:
    """Roll back, abort or fail the rollout: intent saved first, then traffic back to stable."""
    r = run.rollout
    if r.ending is None:
        if r.promoted and r.stable is not None:  # undo a promotion recorded in this rollout
            run.ms.stable = r.stable
            run.ms.previous = [p for p in run.ms.previous if p.version != r.stable.version]
        r.ending = Ending(phase=phase, reason=reason, retire_candidate=retire_candidate, at=run.now())
        r.traffic = TrafficRecord()
        r.request = None
        run.save()
    complete_ending(run)


def complete_ending(run: Run) -> None:
    """Carry out a recorded ending (again, after a crash: every action is idempotent)."""
    r = run.rollout
    ending = r.ending
    assert ending is not None
    if r.stable is not None:
        if not run.platform.health(r.stable.version).ready:  # e.g. killed, or the machine rebooted
            run.platform.deploy(r.stable.to_model_version(run.model), run.replicas())
        run.platform.set_traffic(Traffic(stable=r.stable.version))
    if ending.retire_candidate:
        try:
            run.platform.retire(r.candidate.version)
        except Exception as exc:
            run.emit("warning", f"could not retire {r.candidate.version}: {exc}")
    r = run.rollout
    r.phase, r.reason, r.finished_at = ending.phase, ending.reason, run.now()
    r.request, r.ending = None, None
    kind = {Phase.ABORTED: "aborted", Phase.FAILED: "failed"}.get(ending.phase, "rolled_back")
    run.emit(kind, f"{ending.reason}; all traffic on {r.stable.version if r.stable else '-'}"
                   + ("" if ending.retire_candidate else f", {r.candidate.version} kept running for inspection"),
             r.step_index)
    run.ms.archive()
    run.save()


def record_step(run: Run, outcome: StepOutcome, reason: str, index: int | None = None, by: str | None = None,
                deciding: tuple[MeasurementRecord, ...] | list[MeasurementRecord] = ()) -> None:
    """How a step ended, stored once (saved with the next transition)."""
    r = run.rollout
    i = r.step_index if index is None else index
    step = r.plan[i]
    r.steps.append(StepRecord(index=i, kind=step.kind, step=step.describe(), outcome=outcome,
                              started_at=r.step_started_at if i == r.step_index else None, ended_at=run.now(),
                              reason=reason, by=by, deciding=list(deciding)))


def check_request(model: str, r: RolloutState, request: str) -> None:
    """Refuse a request the rollout cannot carry out, before anything changes."""
    if request == "promote_full" and not any(isinstance(s, PromoteStep) for s in r.plan):
        raise BadInput(f"the plan of {model}:{r.candidate.version} has no promotion step "
                       "(shadow with on_success: discard); use `rollout promote` without --full")


def apply_promote(run: Run, full: bool, by: str) -> None:
    """Pass the step that waits (pause, gate, analysis), or with ``full`` skip to the
    promote step at 100%: the skipped steps are recorded as skipped, never as passed."""
    check_request(run.model, run.rollout, "promote_full" if full else "promote")
    r = run.rollout
    step = r.current_step()
    if full:
        target = next(i for i, s in enumerate(r.plan) if isinstance(s, PromoteStep))
        for i in range(r.step_index, target):
            record_step(run, "skipped", f"skipped by `rollout promote --full` from {by}", index=i, by=by)
        run.emit("promote", f"full promotion requested by {by}: 100% on {r.candidate.version}, "
                            f"skipping steps {r.step_index + 1}-{target}", r.step_index)
        r.traffic = TrafficRecord(weight=100)
        r.step_index = target
    elif isinstance(step, (PauseStep, GateStep, AnalysisStep)):
        record_step(run, "passed_by_operator", f"{step.describe()} passed by {by}", by=by)
        run.emit("promote", f"{step.describe()} passed by {by}", r.step_index)
        r.step_index += 1
    else:
        run.emit("promote", f"promote requested by {by}; nothing is waiting at step {r.step_index + 1}", r.step_index)
    r.phase, r.step_started_at, r.reason = Phase.PROGRESSING, None, ""
    r.request = r.requested_by = None
    run.save()  # intent first: the 100% split below is applied by a resumed run too
    r = run.rollout
    if full and r.stable is not None:
        run.platform.set_traffic(Traffic(stable=r.stable.version, candidate=r.candidate.version, weight=100))


def ensure_running(run: Run) -> str | None:
    """Both versions up (restarting a killed one); the reason if the candidate cannot be."""
    r = run.rollout
    if r.stable is not None:
        run.platform.deploy(r.stable.to_model_version(run.model), run.replicas())
    try:
        run.platform.deploy(r.candidate.to_model_version(run.model), run.replicas())
    except DeployError as exc:
        return f"candidate {r.candidate.version} could not be deployed: {exc}"
    return None


def recorded_traffic(r: RolloutState) -> Traffic:
    """The split the state says is in force: what the analysis is judged against."""
    if r.promoted or r.stable is None:
        return Traffic(stable=r.candidate.version)
    return Traffic(stable=r.stable.version, candidate=r.candidate.version, weight=r.traffic.weight,
                   mirror=r.traffic.mirror)


def retire_due(run: Run, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Retire old versions whose scale-down delay has passed (they were kept for rollback).
    ``keep`` names versions a command is about to use (a rollback target must not be
    stopped only to be cold-started again)."""
    now = run.now()
    due = [x for x in run.ms.retirements if x.due_at <= now]
    if not due:
        return
    ms = run.ms
    in_use = set(keep) | {v.version for v in (ms.stable,) if v}
    if ms.rollout is not None and ms.rollout.phase.active:
        in_use.add(ms.rollout.candidate.version)
    failed = []
    for x in due:
        if x.version in in_use:
            continue
        try:
            run.platform.retire(x.version)
            run.emit("retired", f"{x.version} retired: its scale-down delay has passed")
        except Exception as exc:  # cleanup must never block a rollout or a rollback
            failed.append(x)
            run.emit("warning", f"could not retire {x.version} yet: {exc}")
    # A due version now in use (stable again after a rollback) is no longer retired at all;
    # one a command is about to use (``keep``) stays due for later.
    run.ms.retirements = [x for x in run.ms.retirements if x not in due or x in failed or x.version in keep]
    run.save()


def next_retirement(run: Run) -> float | None:
    return min((x.due_at for x in run.ms.retirements), default=None)
