"""The engine: executes a plan step by step and persists state after every transition.

It knows steps, not strategies. Everything it does to the world goes through the
Platform; everything it knows is in the ModelState, saved with compare-and-swap, so
a killed run is resumed by the next `rollout start` instead of being repeated.
Commands from other processes (promote, abort, rollback while a run holds the lock)
arrive as a ``request`` field in the state, which the running loop polls.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout.analysis.base import MetricProvider, QueryContext, Verdict
from rollout.analysis.runner import AnalysisRunner
from rollout.clock import Clock, SystemClock
from rollout.errors import BadInput, Conflict, DeployError, Locked, NotFound, PlatformError, RolloutInProgress
from rollout.gates import GateResult, call_gate, hooks_of, payload as hook_payload
from rollout.platforms.base import Platform, Traffic
from rollout.registry import gate as registry_gate
from rollout.registry.base import ModelVersion
from rollout.spec import RolloutSpec, parse_spec
from rollout.state import (
    Event,
    ModelState,
    Phase,
    Request,
    Retirement,
    RolloutState,
    StateStore,
    TrafficRecord,
    VersionRecord,
    holder_identity,
)
from rollout.steps import AnalysisStep, GateStep, PauseStep, PromoteStep, ScaleDownStep, Step, TrafficStep

log = logging.getLogger("rollout.engine")

PREVIOUS_LIMIT = 10


GateCaller = Callable[[GateStep, dict[str, Any]], GateResult]
Listener = Callable[[Event, ModelState], None]

# Default gate: POST the payload; any 2xx passes (Flagger's webhook semantics). The
# caller, GateResult and the hook payload live in rollout/gates.py (issue #5).
http_gate: GateCaller = call_gate


@dataclass
class Services:
    store: StateStore
    platform: Platform
    providers: Mapping[str, MetricProvider] = field(default_factory=dict)
    clock: Clock = field(default_factory=SystemClock)
    gate: GateCaller = http_gate
    listeners: list[Listener] = field(default_factory=list)
    poll_s: float = 1.0  # how often a waiting run looks for promote/abort requests
    request_timeout_s: float = 120.0  # how long a command waits for the running holder to act


# Outcomes of executing a step once.
@dataclass(frozen=True)
class _Done:
    message: str


@dataclass(frozen=True)
class _Wait:
    seconds: float


@dataclass(frozen=True)
class _Pause:
    reason: str


@dataclass(frozen=True)
class _Fail:
    reason: str


def exit_code_for(phase: Phase) -> int:
    """Exit codes from DESIGN.md: 0 promoted (or completed), 3 rolled back, 4 paused."""
    if phase in (Phase.PROMOTED, Phase.COMPLETED):
        return 0
    if phase is Phase.PAUSED:
        return 4
    if phase in (Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED):
        return 3
    return 1


class Engine:
    def __init__(self, spec: RolloutSpec, services: Services, command: str = "start") -> None:
        self.spec = spec
        self.model = spec.model
        self.s = services
        self.holder = holder_identity(command)
        self.ms: ModelState = ModelState(model=self.model)
        self._runner: AnalysisRunner | None = None
        # webhooks (issue #5): when a waiting gate is asked next, when `rollback` hooks are polled next
        self._gate_next_ask: tuple[str, int, float] | None = None
        self._rollback_next_poll = 0.0
        self._checks_next_at = 0.0  # when the running loop next checks health and due retirements
        self.noop = False  # start() found the version already stable: nothing was done
        self.handed_over = False  # the command was carried out by the run that holds the lock

    # ------------------------------------------------------------------ public commands

    def start(self, version: ModelVersion, supersede: bool = False, plan: list[Step] | None = None) -> ModelState:
        """Start (or resume) a rollout of ``version``; returns when it ends or pauses."""
        from strategies import plan as make_plan

        if version.name != self.model:
            raise BadInput(f"reference {version.ref} is for model {version.name!r} but the spec is for {self.model!r}")
        steps = plan if plan is not None else make_plan(self.spec)  # validate before taking the lock
        with self.s.store.lock(self.model, self.holder):
            self._load()
            self._retire_due(keep={version.version})
            registry_gate.enforce(self.spec.registry, version, self.ms.stable)  # issue 11: before any traffic moves
            active = self.ms.rollout if self.ms.rollout and self.ms.rollout.phase.active else None
            if active is not None:
                if active.candidate.version == version.version:
                    self._use_stored_spec(active)
                    return self._resume()
                if not supersede:
                    raise RolloutInProgress(
                        f"a rollout of {self.model}:{active.candidate.version} is {active.phase.value.lower()}; "
                        f"finish it (rollout promote/abort {self.model}) or pass --supersede"
                    )
                self._end_rollout(Phase.ABORTED, f"superseded by {version.version}", retire_candidate=True)
            if self.ms.stable is None:
                return self._initial_deploy(version)
            if self.ms.stable.version == version.version:
                self.noop = True
                self._emit("noop", f"{version.ref} is already the stable version; nothing to do")
                return self.ms
            return self._begin(version, steps)

    def promote(self, version: str | None = None, full: bool = False) -> ModelState:
        """Pass the current pause, gate or inconclusive analysis; with ``full``, skip to promotion."""
        request: Request = "promote_full" if full else "promote"
        try:
            with self.s.store.lock(self.model, self.holder):
                return self._act(request, version)
        except Locked:
            return self._request(request, version)

    def abort(self) -> ModelState:
        """Traffic back to stable; the candidate keeps running for inspection."""
        try:
            with self.s.store.lock(self.model, self.holder):
                return self._act("abort", None)
        except Locked:
            return self._request("abort", None)

    def rollback(self, to: str | None = None) -> ModelState:
        """Restore the previous stable (or ``to``, one of the earlier stables) now, without
        analysis. Only versions that once were stable here qualify: a typo must not put an
        untested version on all traffic."""
        try:
            with self.s.store.lock(self.model, self.holder):
                self._load()
                target = to or (self.ms.previous[0].version if self.ms.previous else None)
                self._retire_due(keep={target} if target else set())
                r = self.ms.rollout
                if r is not None and r.phase.active and (to is None or (r.stable and to == r.stable.version)):
                    self._end_rollout(Phase.ROLLED_BACK, f"rolled back by {self.holder}", retire_candidate=True)
                    return self.ms
                if r is not None and r.phase.active:
                    self._end_rollout(Phase.ROLLED_BACK, f"rolled back to {to} by {self.holder}", retire_candidate=True)
                return self._rollback_stable(to)
        except Locked:
            if to is not None:
                raise
            return self._request("rollback", None)

    # ------------------------------------------------------------------ state plumbing

    def _load(self) -> None:
        self.ms = self.s.store.load(self.model)

    def _save(self) -> None:
        """Save with CAS. We hold the lock, so a conflict can only be a request written
        by another command: adopt it and save again."""
        for _ in range(20):
            try:
                self.ms = self.s.store.save(self.ms)
                return
            except Conflict:
                fresh = self.s.store.load(self.model)
                self._adopt_request(fresh)
                self.ms.revision = fresh.revision
        raise Conflict(f"could not save the state of {self.model!r}: it keeps changing")

    def _adopt_request(self, fresh: ModelState) -> None:
        r, f = self.ms.rollout, fresh.rollout
        if r is not None and f is not None and f.id == r.id and f.request and not r.request:
            r.request, r.requested_by = f.request, f.requested_by

    def _emit(self, kind: str, message: str, step_index: int | None = None) -> None:
        event = Event(at=self.s.clock.now(), kind=kind, message=message, step_index=step_index)
        if self.ms.rollout is not None:
            self.ms.rollout.events.append(event)
        log.info("%s: %s", kind, message)
        for listener in self.s.listeners:
            try:
                listener(event, self.ms)
            except Exception:  # a broken listener (printer, notifier) must never stop a rollout
                log.exception("listener failed on %s", kind)

    def _active_rollout(self, verb: str) -> RolloutState:
        r = self.ms.rollout
        if r is None or not r.phase.active:
            last = f" (last rollout: {r.candidate.version} {r.phase.value})" if r else ""
            raise NotFound(f"no rollout of {self.model!r} is in progress to {verb}{last}")
        return r

    @staticmethod
    def _check_version(r: RolloutState, version: str | None) -> None:
        if version is not None and version != r.candidate.version:
            raise BadInput(f"the rollout in progress is of {r.candidate.version}, not {version}")

    def _act(self, request: Request, version: str | None) -> ModelState:
        """Carry out promote / abort / rollback of the active rollout; the lock is held."""
        self._load()
        r = self._active_rollout(request.replace("_full", ""))
        self._check_version(r, version)
        r.request = None
        if request == "abort":
            self._end_rollout(Phase.ABORTED, f"aborted by {self.holder}", retire_candidate=False)
            return self.ms
        if request == "rollback":
            self._end_rollout(Phase.ROLLED_BACK, f"rolled back by {self.holder}", retire_candidate=True)
            return self.ms
        self._use_stored_spec(r)
        self._apply_promote(request == "promote_full", by=self.holder)
        return self._run()

    def _check_request(self, r: RolloutState, request: Request) -> None:
        if request == "promote_full" and not any(isinstance(s, PromoteStep) for s in r.plan):
            raise BadInput(f"the plan of {self.model}:{r.candidate.version} has no promotion step "
                           "(shadow with on_success: discard); use `rollout promote` without --full")

    def _request(self, request: Request, version: str | None) -> ModelState:
        """Another run holds the lock: leave a request in the state and wait for it to act.
        If that run goes away first (it paused, or was killed), act here instead."""
        for _ in range(20):
            ms = self.s.store.load(self.model)
            r = ms.rollout
            if r is None or not r.phase.active:
                raise NotFound(f"no rollout of {self.model!r} is in progress (and another command holds the lock)")
            self._check_version(r, version)
            self._check_request(r, request)
            r.request, r.requested_by = request, self.holder
            try:
                self.ms = self.s.store.save(ms)
                break
            except Conflict:
                continue
        rollout_id = self.ms.rollout.id if self.ms.rollout else ""
        deadline = self.s.clock.now() + self.s.request_timeout_s
        while self.s.clock.now() < deadline:
            self.s.clock.sleep(min(self.s.poll_s, 0.2))
            ms = self.s.store.load(self.model)
            r = ms.rollout
            if r is None or r.id != rollout_id or r.request is None or not r.phase.active:
                self.ms, self.handed_over = ms, True
                return ms
            try:
                with self.s.store.lock(self.model, self.holder):  # the holder is gone: act ourselves
                    return self._act(request, version)
            except Locked:
                continue
        raise Locked(self.model, "the running rollout, which has not acted on the request yet "
                     f"({request} is recorded and will be applied when it next looks)")

    def exit_code(self, ms: ModelState) -> int:
        """The CLI's exit code for what a command left behind (DESIGN.md)."""
        r = ms.rollout
        if self.noop or r is None or r.phase is Phase.PROGRESSING:
            return 0  # nothing to do, or a request the running rollout accepted and carries on with
        return exit_code_for(r.phase)

    def _use_stored_spec(self, r: RolloutState) -> None:
        """A resumed rollout is judged by the spec it started with, not an edited file."""
        stored = parse_spec(r.spec, source=f"the stored spec of {self.model}:{r.candidate.version}")
        if stored.model_dump(mode="json") != self.spec.model_dump(mode="json"):
            self._emit("warning", "the spec given differs from the one this rollout started with; continuing with "
                                  "the stored one (abort, then start again, to use the new spec)", r.step_index)
        self.spec, self._runner = stored, None

    def _ensure_running(self, r: RolloutState) -> str | None:
        """Both versions up (restarting a killed one); the reason if the candidate cannot be."""
        if r.stable is not None:
            self.s.platform.deploy(r.stable.to_model_version(self.model), self._replicas())
        try:
            self.s.platform.deploy(r.candidate.to_model_version(self.model), self._replicas())
        except DeployError as exc:
            return f"candidate {r.candidate.version} could not be deployed: {exc}"
        return None

    # ------------------------------------------------------------------ beginnings and ends

    def _initial_deploy(self, version: ModelVersion) -> ModelState:
        now = self.s.clock.now()
        record = VersionRecord.of(version)
        self.ms.rollout = RolloutState(
            id=uuid.uuid4().hex[:12], model=self.model, stable=None, candidate=record, strategy="initial",
            spec=self.spec.model_dump(mode="json"), plan=[], started_at=now,
        )
        self._emit("started", f"first deployment of {version.ref}: no stable version yet, so no analysis")
        self.s.platform.deploy(version, self._replicas())
        self.s.platform.set_traffic(Traffic(stable=version.version))
        self.ms.stable = record
        r = self.ms.rollout
        r.traffic = TrafficRecord(weight=100)
        r.promoted = True
        r.phase, r.finished_at = Phase.PROMOTED, self.s.clock.now()
        r.reason = f"{version.ref} deployed as the first stable version"
        self._emit("promoted", r.reason)
        self.ms.archive()
        self._save()
        return self.ms

    def _begin(self, version: ModelVersion, plan: list[Step]) -> ModelState:
        now = self.s.clock.now()
        self.ms.retirements = [x for x in self.ms.retirements if x.version != version.version]
        self.ms.rollout = RolloutState(
            id=uuid.uuid4().hex[:12], model=self.model, stable=self.ms.stable, candidate=VersionRecord.of(version),
            strategy=self.spec.strategy.type, spec=self.spec.model_dump(mode="json"), plan=plan, started_at=now,
        )
        self._emit("started", f"{self.spec.strategy.type} of {version.ref} against stable "
                              f"{self.ms.stable.version if self.ms.stable else '-'}: "
                              + ", ".join(s.describe() for s in plan))
        self._save()
        return self._run()

    def _resume(self) -> ModelState:
        r = self.ms.rollout
        assert r is not None
        step = r.current_step()
        if r.phase is Phase.PAUSED:
            if isinstance(step, PauseStep) and step.seconds is None:
                failed = self._ensure_running(r)
                if failed:
                    self._end_rollout(Phase.FAILED, failed, retire_candidate=True)
                    return self.ms
                self._emit("paused", f"still waiting for `rollout promote {self.model}:{r.candidate.version}`", r.step_index)
                return self.ms
            r.phase, r.step_started_at = Phase.PROGRESSING, None  # retry the analysis or gate
            self._emit("resumed", f"retrying step {r.step_index} ({step.describe() if step else 'end'})", r.step_index)
        else:
            self._emit("resumed", f"resuming {r.candidate.version} at step {r.step_index} "
                                  f"({step.describe() if step else 'end'})", r.step_index)
        self._save()
        return self._run()

    def _end_rollout(self, phase: Phase, reason: str, retire_candidate: bool) -> None:
        """Traffic back to stable first, then (optionally) retire the candidate."""
        r = self.ms.rollout
        assert r is not None
        if r.promoted and r.stable is not None:  # undo a promotion recorded in this rollout
            self.ms.stable = r.stable
            self.ms.previous = [p for p in self.ms.previous if p.version != r.stable.version]
        if r.stable is not None:
            if not self.s.platform.health(r.stable.version).ready:  # e.g. killed, or the machine rebooted
                self.s.platform.deploy(r.stable.to_model_version(self.model), self._replicas())
            self.s.platform.set_traffic(Traffic(stable=r.stable.version))
        r.traffic = TrafficRecord()
        if retire_candidate:
            try:
                self.s.platform.retire(r.candidate.version)
            except Exception as exc:
                self._emit("warning", f"could not retire {r.candidate.version}: {exc}")
        r.phase, r.reason, r.finished_at = phase, reason, self.s.clock.now()
        r.request = None
        kind = {Phase.ABORTED: "aborted", Phase.FAILED: "failed"}.get(phase, "rolled_back")
        self._emit(kind, f"{reason}; all traffic on {r.stable.version if r.stable else '-'}"
                         + ("" if retire_candidate else f", {r.candidate.version} kept running for inspection"),
                   r.step_index)
        self.ms.archive()
        self._save()

    def _rollback_stable(self, to: str | None) -> ModelState:
        current = self.ms.stable
        if current is None:
            raise NotFound(f"model {self.model!r} has no stable version to roll back from")
        known = [p.version for p in self.ms.previous]
        if to is None:
            if not self.ms.previous:
                raise NotFound(f"model {self.model!r} has no previous stable version; stable is {current.version}")
            target = self.ms.previous[0]
        elif to == current.version:
            raise BadInput(f"{self.model}:{to} is already the stable version")
        elif to in known:
            target = next(p for p in self.ms.previous if p.version == to)
        else:
            raise NotFound(f"{self.model}:{to} was never stable here, so it cannot be rolled back to; previous "
                           f"stable versions: {', '.join(known) or 'none'} (to deploy another version, start a rollout of it)")
        started = self.s.clock.now()
        self.ms.rollout = RolloutState(
            id=uuid.uuid4().hex[:12], model=self.model, stable=current, candidate=target, strategy="rollback",
            spec=self.spec.model_dump(mode="json"), plan=[], started_at=started,
        )
        self._emit("started", f"rollback of {self.model} from {current.version} to {target.version}")
        self.s.platform.deploy(target.to_model_version(self.model), self._replicas())
        self.s.platform.set_traffic(Traffic(stable=target.version))
        switched = self.s.clock.now()
        self.ms.stable = target
        self.ms.previous = [current, *[p for p in self.ms.previous if p.version not in (current.version, target.version)]][:PREVIOUS_LIMIT]
        self.ms.retirements = [x for x in self.ms.retirements if x.version != target.version]
        r = self.ms.rollout
        r.traffic = TrafficRecord(weight=100)
        r.phase, r.finished_at = Phase.ROLLED_BACK, switched
        r.reason = (f"rolled back from {current.version} to {target.version} by {self.holder}; "
                    f"100% of traffic on {target.version} {switched - started:.3f}s after the command")
        self._emit("rolled_back", r.reason)
        try:
            self.s.platform.retire(current.version)
        except Exception as exc:
            self._emit("warning", f"could not retire {current.version}: {exc}")
        self.ms.archive()
        self._save()
        return self.ms

    def _retire_due(self, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Retire old versions whose scale-down delay has passed (they were kept for rollback).

        There is no controller: this runs when a command touches the model, and while a
        rollout runs. ``keep`` names versions the command is about to use (a rollback
        target must not be stopped only to be cold-started again)."""
        now = self.s.clock.now()
        due = [x for x in self.ms.retirements if x.due_at <= now]
        if not due:
            return
        in_use = set(keep) | {v.version for v in (self.ms.stable,) if v}
        if self.ms.rollout and self.ms.rollout.phase.active:
            in_use.add(self.ms.rollout.candidate.version)
        failed = []
        for x in due:
            if x.version in in_use:
                continue
            try:
                self.s.platform.retire(x.version)
                self._emit("retired", f"{x.version} retired: its scale-down delay has passed")
            except Exception as exc:  # cleanup must never block a rollout or a rollback
                failed.append(x)
                self._emit("warning", f"could not retire {x.version} yet: {exc}")
        self.ms.retirements = [x for x in self.ms.retirements if x not in due or x in failed or x.version in keep]
        self._save()

    def _replicas(self) -> int:
        return getattr(self.spec.platform, "replicas", 1)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> ModelState:
        r = self.ms.rollout
        assert r is not None
        failed = self._ensure_running(r)
        if failed:
            self._end_rollout(Phase.FAILED, failed, retire_candidate=True)
            return self.ms
        if r.step_index > 0 and r.stable is not None:
            # A run killed between moving traffic and saving may have left another split
            # behind: the recorded one is the truth the analysis will be judged against.
            recorded = (Traffic(stable=r.candidate.version) if r.promoted else
                        Traffic(stable=r.stable.version, candidate=r.candidate.version,
                                weight=r.traffic.weight, mirror=r.traffic.mirror))
            self.s.platform.set_traffic(recorded)
        while r.phase is Phase.PROGRESSING:
            if self._handle_request():
                continue
            step = r.current_step()
            if step is None:
                self._finish()
                break
            if r.step_started_at is None:
                r.step_started_at = self.s.clock.now()
                self._emit("step", f"step {r.step_index + 1}/{len(r.plan)}: {step.describe()}", r.step_index)
                self._save()
            try:
                outcome = self._execute(step)
            except (PlatformError, DeployError) as exc:
                # The plan cannot be carried out (a version died, the platform refused):
                # put traffic back on stable rather than leave it on a broken split.
                outcome = _Fail(f"step {r.step_index + 1} ({step.describe()}) failed on the platform: {exc}")
            if isinstance(outcome, _Done):
                self._emit("step_done", outcome.message, r.step_index)
                r.step_index += 1
                r.step_started_at = None
                self._save()
            elif isinstance(outcome, _Wait):
                if self._rollback_hook_fired():  # webhooks (issue #5)
                    continue
                if self._periodic_checks():
                    continue
                self.s.clock.sleep(max(0.0, min(outcome.seconds, self.s.poll_s)))
            elif isinstance(outcome, _Pause):
                if self._rollback_hook_fired(force=True):  # webhooks (issue #5)
                    continue
                if self._handle_request():  # a request that arrived just now is acted on, not parked
                    continue
                r.phase, r.reason = Phase.PAUSED, outcome.reason
                self._emit("paused", outcome.reason, r.step_index)
                self._save()
            elif isinstance(outcome, _Fail):
                self._end_rollout(Phase.ROLLED_BACK, outcome.reason, retire_candidate=True)
        return self.ms

    def _periodic_checks(self) -> bool:
        """While waiting (at most once per analysis interval): a candidate that died is
        rolled back, not left with traffic; old versions past their delay are retired.
        True if the rollout ended."""
        now = self.s.clock.now()
        if now < self._checks_next_at:
            return False
        self._checks_next_at = now + self.spec.analysis.interval_s
        r = self.ms.rollout
        assert r is not None
        health = self.s.platform.health(r.candidate.version)
        if not health.ready:
            self._end_rollout(Phase.ROLLED_BACK, f"candidate {r.candidate.version} stopped being ready at step "
                                                 f"{r.step_index + 1}: {health.detail}", retire_candidate=True)
            return True
        self._retire_due()
        return False

    def _handle_request(self) -> bool:
        """Apply a promote/abort/rollback that another command left in the state."""
        fresh = self.s.store.load(self.model)
        self._adopt_request(fresh)
        r = self.ms.rollout
        if r is None or r.request is None:
            return False
        request, by = r.request, r.requested_by or "another command"
        r.request = None
        self.ms.revision = fresh.revision
        if request == "abort":
            self._end_rollout(Phase.ABORTED, f"aborted by {by}", retire_candidate=False)
        elif request == "rollback":
            self._end_rollout(Phase.ROLLED_BACK, f"rolled back by {by}", retire_candidate=True)
        else:
            try:
                self._apply_promote(request == "promote_full", by=by)
            except BadInput as exc:  # another command's mistake must not stop this run
                self._emit("warning", f"ignored {request} from {by}: {exc}", r.step_index)
                self._save()
        return True

    def _apply_promote(self, full: bool, by: str) -> None:
        r = self.ms.rollout
        assert r is not None
        step = r.current_step()
        if full:
            target = next((i for i, s in enumerate(r.plan) if isinstance(s, PromoteStep)), None)
            if target is None:
                raise BadInput(f"the plan of {self.model}:{r.candidate.version} has no promotion step "
                               "(shadow with on_success: discard); use `rollout promote` without --full")
            assert r.stable is not None
            self.s.platform.set_traffic(Traffic(stable=r.stable.version, candidate=r.candidate.version, weight=100))
            r.traffic = TrafficRecord(weight=100)
            self._emit("promote", f"full promotion requested by {by}: 100% on {r.candidate.version}, "
                                  f"skipping steps {r.step_index + 1}-{target}", r.step_index)
            r.step_index = target
        elif isinstance(step, (PauseStep, GateStep, AnalysisStep)):
            self._emit("promote", f"{step.describe()} passed by {by}", r.step_index)
            r.step_index += 1
        else:
            self._emit("promote", f"promote requested by {by}; nothing is waiting at step {r.step_index + 1}", r.step_index)
        r.phase, r.step_started_at, r.reason = Phase.PROGRESSING, None, ""
        r.request = None
        self._save()

    def _finish(self) -> None:
        r = self.ms.rollout
        assert r is not None
        r.phase = Phase.PROMOTED if r.promoted else Phase.COMPLETED
        r.finished_at = self.s.clock.now()
        if r.promoted:
            r.reason = f"{r.candidate.version} promoted after {len(r.plan)} steps"
        else:
            r.reason = f"{r.candidate.version} passed and was discarded as planned; {r.stable.version if r.stable else '-'} stays stable"
        self._emit("promoted" if r.promoted else "completed", r.reason)
        self.ms.archive()
        self._save()

    # ------------------------------------------------------------------ steps

    def _execute(self, step: Step) -> _Done | _Wait | _Pause | _Fail:
        handler = {
            "traffic": self._traffic, "pause": self._pause, "analysis": self._analysis,
            "gate": self._gate, "promote": self._promote, "scale_down": self._scale_down,
        }[step.kind]
        return handler(step)  # type: ignore[operator]

    def _traffic(self, step: TrafficStep) -> _Done:
        r = self.ms.rollout
        assert r is not None and r.stable is not None
        self.s.platform.set_traffic(Traffic(stable=r.stable.version, candidate=r.candidate.version,
                                            weight=step.weight, mirror=step.mirror))
        r.traffic = TrafficRecord(weight=step.weight, mirror=step.mirror)
        return _Done(f"{r.candidate.version} at {step.weight}%" + (f", mirror {step.mirror}%" if step.mirror else "")
                     + f"; {r.stable.version} at {100 - step.weight}%")

    def _pause(self, step: PauseStep) -> _Done | _Wait | _Pause:
        r = self.ms.rollout
        assert r is not None and r.step_started_at is not None
        if step.seconds is None:
            return _Pause(f"waiting for `rollout promote {self.model}:{r.candidate.version}`")
        left = r.step_started_at + step.seconds - self.s.clock.now()
        return _Wait(left) if left > 0 else _Done(f"paused {step.seconds:g}s")

    def _runner_for(self) -> AnalysisRunner:
        if self._runner is None:
            self._runner = AnalysisRunner(self.spec.analysis.metrics, self.s.providers)
        return self._runner

    def _analysis(self, step: AnalysisStep) -> _Done | _Wait | _Pause | _Fail:
        r = self.ms.rollout
        assert r is not None and r.step_started_at is not None
        runner = self._runner_for()
        started = r.step_started_at
        deadline = started + step.duration_s
        records = [m for m in r.step_measurements() if m.at >= started]
        ticks = len({m.tick for m in records})
        next_at = min(started + (ticks + 1) * self.spec.analysis.interval_s, deadline)
        now = self.s.clock.now()
        if now < next_at:
            return _Wait(next_at - now)
        ctx = QueryContext(
            model=self.model, version=r.candidate.version, stable=r.stable.version if r.stable else None,
            candidate=r.candidate.version, namespace=getattr(self.spec.platform, "namespace", "default"),
            window_s=max(now - started, 1.0), weight=r.traffic.weight, mirror=r.traffic.mirror, preview=step.preview,
        )
        fresh = runner.measure(step.metrics, ctx, r.step_index, ticks, now, history=r.measurements)
        r.measurements.extend(fresh)
        for m in fresh:
            shown = "-" if m.value is None else f"{m.value:.4g}"
            self._emit("measurement", f"{m.metric} [{m.version}] = {shown}: {m.verdict}"
                                      + (" (dry run)" if m.dry_run else "") + f" - {m.reason}", r.step_index)
        self._save()
        verdict = runner.evaluate(step.metrics, records + fresh, at_deadline=now >= deadline)
        if verdict is None:
            return _Wait(0.0)
        where = f"at step {r.step_index + 1}"
        if verdict.verdict is Verdict.PASS:
            return _Done(f"analysis passed {where}: {verdict.reason}")
        if verdict.verdict is Verdict.FAIL:
            return _Fail(f"analysis failed {where}: {verdict.reason}")
        if self.spec.analysis.inconclusive == "fail":
            return _Fail(f"analysis inconclusive {where} (policy: fail): {verdict.reason}")
        return _Pause(f"analysis inconclusive {where}: {verdict.reason}; rerun `rollout start` to measure again, "
                      f"`rollout promote {self.model}:{r.candidate.version}` to accept, or `rollout abort {self.model}`")

    # ------------------------------------------------------------------ gates and webhooks (issue #5)
    # Semantics in rollout/gates.py: pre-rollout refusing rolls back; a plain gate and
    # the confirm-* hooks are re-asked every analysis interval for step.wait_s
    # (None: until they pass), then pause; a `rollback` hook answering 2xx rolls back.

    def _gate(self, step: GateStep) -> _Done | _Wait | _Pause | _Fail:
        r = self.ms.rollout
        assert r is not None and r.step_started_at is not None
        now = self.s.clock.now()
        key = (r.id, r.step_index)
        if self._gate_next_ask is not None and self._gate_next_ask[:2] == key and now < self._gate_next_ask[2]:
            return _Wait(self._gate_next_ask[2] - now)
        first_ask = self._gate_next_ask is None or self._gate_next_ask[:2] != key
        result = self.s.gate(step, hook_payload(self.model, r, step.name, step.hook, step.metadata))
        if result.ok:
            self._gate_next_ask = None
            return _Done(f"gate {step.name} passed ({result.detail})")
        if step.hook == "pre-rollout":
            return _Fail(f"pre-rollout gate {step.name} answered {result.detail} at step {r.step_index + 1}")
        waited = now - r.step_started_at
        if step.wait_s is not None and waited >= step.wait_s:
            self._gate_next_ask = None
            return _Pause(f"gate {step.name} answered {result.detail}; rerun `rollout start` to ask again or "
                          f"`rollout promote {self.model}:{r.candidate.version}` to pass it")
        interval = self.spec.analysis.interval_s
        if step.wait_s is not None:
            interval = min(interval, max(0.0, r.step_started_at + step.wait_s - now))
        self._gate_next_ask = (r.id, r.step_index, now + interval)
        if first_ask:
            self._emit("waiting", f"gate {step.name} answered {result.detail}; asking again every "
                                  f"{self.spec.analysis.interval_s:g}s"
                                  + ("" if step.wait_s is None else f" for up to {step.wait_s:g}s")
                                  + f" (`rollout promote {self.model}:{r.candidate.version}` passes it)", r.step_index)
        return _Wait(interval)

    def _rollback_hook_fired(self, force: bool = False) -> bool:
        """Poll the `rollback` hooks (at most once per analysis interval unless ``force``);
        a 2xx from any of them rolls the rollout back."""
        hooks = hooks_of(self.spec, "rollback")
        r = self.ms.rollout
        now = self.s.clock.now()
        if not hooks or r is None or not r.phase.active or (now < self._rollback_next_poll and not force):
            return False
        self._rollback_next_poll = now + self.spec.analysis.interval_s
        from strategies.hooks import step_for

        for hook in hooks:
            result = self.s.gate(step_for(hook), hook_payload(self.model, r, hook.name, "rollback", hook.metadata))
            if result.ok:
                self._end_rollout(Phase.ROLLED_BACK, f"rollback webhook {hook.name} answered {result.detail} "
                                                     f"at step {r.step_index + 1}", retire_candidate=True)
                return True
        return False

    def _promote(self, step: PromoteStep) -> _Done:
        r = self.ms.rollout
        assert r is not None
        old = self.ms.stable
        # The data plane first: the candidate becomes the stable route with all traffic.
        self.s.platform.set_traffic(Traffic(stable=r.candidate.version))
        r.traffic = TrafficRecord(weight=100)
        self.ms.stable = r.candidate
        if old is not None:
            self.ms.previous = [old, *[p for p in self.ms.previous if p.version not in (old.version, r.candidate.version)]][:PREVIOUS_LIMIT]
        r.promoted = True
        return _Done(f"{r.candidate.version} is now stable" + (f" (previous: {old.version})" if old else ""))

    def _scale_down(self, step: ScaleDownStep) -> _Done:
        r = self.ms.rollout
        assert r is not None
        target = r.candidate if step.version == "candidate" else r.stable
        if target is None:
            return _Done("nothing to scale down")
        if step.after_s <= 0:
            self.s.platform.retire(target.version)
            return _Done(f"{target.version} retired")
        due = self.s.clock.now() + step.after_s
        self.ms.retirements = [x for x in self.ms.retirements if x.version != target.version]
        self.ms.retirements.append(Retirement(version=target.version, due_at=due))
        return _Done(f"{target.version} kept running for {step.after_s:g}s so a rollback is instant")
