"""The reconciler: ``Reconciler.reconcile(model, now) -> Result(state, wake_at)``.

One call loads the model's state, applies a pending request, and does everything that
is due now: continue a recorded ending, retire old versions whose delay passed, check
the candidate's health and the rollback hooks, and advance the plan (a traffic change,
a measurement, a gate call, the end of a pause, a promotion) until a step has to wait.
It saves after every transition, never sleeps, and returns when it next needs to run
(``wake_at``; None: only a command can move it on). The caller holds the model's lock.
Anchor: controller-runtime's ``Reconcile(req) -> Result{RequeueAfter}``."""

from __future__ import annotations

from dataclasses import dataclass

from rollout.engine import lifecycle, mailbox, serving
from rollout.engine.executors import EXECUTORS, Done, Fail, Pause, Wait
from rollout.engine.run import Memo, Run
from rollout.engine.services import Services
from rollout.errors import DeployError, PlatformError
from rollout.gates import hooks_of, payload as hook_payload
from rollout.state import ModelState, Phase

RETRY_S = 30.0  # a retirement that failed is tried again after this long


@dataclass(frozen=True)
class Result:
    state: ModelState
    wake_at: float | None  # absolute clock time of the next reconcile; None: nothing is due


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


class Reconciler:
    """Reconciles models with one set of services; remembers per model only what may be
    forgotten (rollout/engine/run.py: Memo)."""

    def __init__(self, services: Services, holder: str) -> None:
        self.services = services
        self.holder = holder
        self.memos: dict[str, Memo] = {}

    def run_for(self, model: str, now: float | None = None, state: ModelState | None = None) -> Run:
        return Run(model, self.services, self.holder, self.memos.setdefault(model, Memo()), state=state, now=now)

    def reconcile(self, model: str, now: float | None = None, state: ModelState | None = None) -> Result:
        """``state``: the model's state just loaded by the caller under the lock (saves a load)."""
        run = self.run_for(model, now, state)
        r = run.ms.rollout
        if r is not None and r.phase.active:
            if r.ending is not None:
                lifecycle.complete_ending(run)  # a rollback (or abort) a killed process began
            elif r.request is not None:
                mailbox.apply(run)
        lifecycle.retire_due(run)
        active = run.ms.rollout is not None and run.ms.rollout.phase.active
        wake = self._advance(run) if active else None
        if not (run.ms.rollout is not None and run.ms.rollout.phase.active):
            self.memos.pop(model, None)  # nothing to remember about an ended rollout
        return Result(run.ms, _earliest(wake, self._retirement_wake(run)))

    # ------------------------------------------------------------------ internals

    def _retirement_wake(self, run: Run) -> float | None:
        due = lifecycle.next_retirement(run)
        if due is None:
            return None
        return max(due, run.now() + RETRY_S) if due <= run.now() else due

    def _advance(self, run: Run) -> float | None:
        memo = run.memo
        if run.rollout.phase is Phase.PAUSED:
            if self._checks(run):
                return None
            return memo.checks_next_at
        if not memo.attached:
            failed = lifecycle.ensure_running(run)
            if failed:
                lifecycle.end(run, Phase.FAILED, failed, retire_candidate=True)
                return None
            r = run.rollout
            if r.step_index > 0 or r.promoted:
                # A run killed between recording a split and applying it, or after a
                # crash, may have left another split behind: the recorded one is the
                # truth the analysis is judged against.
                run.platform.set_traffic(lifecycle.recorded_traffic(r))
            memo.attached = True
        retried: int | None = None  # the step retried after a look at what serves (once per reconcile)
        while run.rollout.phase is Phase.PROGRESSING:
            if self._checks(run):
                return None
            r = run.rollout
            step = r.current_step()
            if step is None:
                lifecycle.finish(run)
                return None
            if r.step_started_at is None:
                r.step_started_at = run.now()
                run.emit("step", f"step {r.step_index + 1}/{len(r.plan)}: {step.describe()}", r.step_index)
                run.save()
            try:
                outcome = EXECUTORS[step.kind](step, run)
            except (PlatformError, DeployError) as exc:
                # Something that serves may have died under the step: look now. A repaired
                # router or stable retries the step (once per reconcile); a dead candidate
                # rolls back; only a failure nothing explains fails the step.
                index = run.rollout.step_index
                if retried != index:
                    retried = index
                    if self._checks(run, force=True):
                        return None
                    continue
                outcome = Fail(f"step {index + 1} ({step.describe()}) failed on the platform: {exc}")
            r = run.rollout
            if isinstance(outcome, Done):
                lifecycle.record_step(run, "passed", outcome.message, deciding=outcome.deciding)
                run.emit("step_done", outcome.message, r.step_index)
                r.step_index += 1
                r.step_started_at = None
                run.save()
            elif isinstance(outcome, Wait):
                return _earliest(outcome.until, memo.checks_next_at,
                                 memo.hooks_next_at if hooks_of(run.spec, "rollback") else None)
            elif isinstance(outcome, Pause):
                if self._rollback_hook_fired(run, force=True):
                    return None
                if mailbox.pending(run):  # a request that arrived just now is acted on, not parked
                    mailbox.apply(run)
                    continue
                if outcome.outcome is not None:
                    lifecycle.record_step(run, outcome.outcome, outcome.reason, deciding=outcome.deciding)
                r = run.rollout
                r.phase, r.reason = Phase.PAUSED, outcome.reason
                run.emit("paused", outcome.reason, r.step_index)
                run.save()
                return None
            elif isinstance(outcome, Fail):
                lifecycle.record_step(run, outcome.outcome, outcome.reason, deciding=outcome.deciding)
                lifecycle.end(run, Phase.ROLLED_BACK, outcome.reason, retire_candidate=True)
                return None
        return None

    def _checks(self, run: Run, force: bool = False) -> bool:
        """At most once per analysis interval (or now, with ``force``): everything that
        serves is looked at (rollout/engine/serving.py): a dead router or stable is
        repaired, a candidate that stopped being ready is rolled back, a stable or router
        that cannot be brought back pauses the rollout; then the rollback hooks are asked.
        True if the rollout ended or paused."""
        memo = run.memo
        now = run.now()
        if not run.rollout.plan:
            return False  # a first deployment or a rollback to an earlier stable: no candidate on trial
        if now >= memo.checks_next_at or force:
            memo.checks_next_at = now + run.spec.analysis.interval_s
            r = run.rollout
            if memo.attached or r.phase is Phase.PAUSED:
                found = serving.look(run)
                if found.candidate_down:
                    if r.phase is Phase.PAUSED and r.stable is None:
                        return False
                    lifecycle.end(run, Phase.ROLLED_BACK, found.candidate_down, retire_candidate=True)
                    return True
                if found.blocked:
                    self._pause(run, f"{found.blocked}; the candidate is not blamed. Fix it, then rerun "
                                     f"`rollout start {run.model}:{run.rollout.candidate.version}`, or "
                                     f"`rollout abort {run.model}`")
                    return True
        return self._rollback_hook_fired(run)

    def _pause(self, run: Run, reason: str) -> None:
        r = run.rollout
        if r.phase is Phase.PAUSED and r.reason == reason:
            return
        r.phase, r.reason = Phase.PAUSED, reason
        run.emit("paused", reason, r.step_index)
        run.save()

    def _rollback_hook_fired(self, run: Run, force: bool = False) -> bool:
        """Ask the `rollback` hooks (at most once per analysis interval unless ``force``);
        a 2xx from any of them rolls the rollout back."""
        hooks = hooks_of(run.spec, "rollback")
        memo = run.memo
        now = run.now()
        if not hooks or (now < memo.hooks_next_at and not force):
            return False
        memo.hooks_next_at = now + run.spec.analysis.interval_s
        from rollout.strategies.hooks import step_for

        r = run.rollout
        for hook in hooks:
            result = run.s.gate(step_for(hook), hook_payload(run.model, r, hook.name, "rollback", hook.metadata))
            if result.ok:
                lifecycle.end(run, Phase.ROLLED_BACK, f"rollback webhook {hook.name} answered {result.detail} "
                                                      f"at step {r.step_index + 1}", retire_candidate=True)
                return True
        return False
