"""The commands on top of the reconciler, as one object the CLI, the demo and the bench
drive: ``start`` (a loop of reconcile and wait, or with ``detach`` one reconcile),
``promote``, ``abort`` and ``rollback`` (a request left in the state when another
process holds the model, or acted on here when nobody does)."""

from __future__ import annotations

import contextlib

from rollout.engine import lifecycle, mailbox, serving
from rollout.engine.outcome import CommandResult
from rollout.engine.reconcile import Reconciler
from rollout.engine.run import Run
from rollout.engine.services import Services
from rollout.errors import BadInput, Locked, NotFound, PlatformError, RolloutInProgress, StateDamaged
from rollout.platforms.base import Traffic
from rollout.registry import gate as registry_gate
from rollout.registry.base import ModelVersion
from rollout.spec import RolloutSpec
from rollout.state import UNNAMED_HOLDER, ModelState, Phase, Request, held_for_one_pass, holder_identity
from rollout.steps import PauseStep, Step


class Engine:
    def __init__(self, spec: RolloutSpec, services: Services, command: str = "start") -> None:
        self.spec = spec
        self.model = spec.model
        self.s = services
        self.holder = holder_identity(command)
        self.reconciler = Reconciler(services, self.holder)
        self.noop = False  # start() found the version already stable: nothing was done
        self.handed_over = False  # the command was carried out by the process that holds the lock
        self.detached = False
        self.adopted: str | None = None  # start adopted this version the platform served as stable
        self.from_platform = False  # abort/rollback worked from the platform's view (no usable state)

    # ------------------------------------------------------------------ commands

    def start(self, version: ModelVersion, supersede: bool = False, plan: list[Step] | None = None,
              detach: bool = False) -> ModelState:
        """Start (or resume) a rollout of ``version``. Returns when it ends or pauses; with
        ``detach``, after recording it and one reconcile (a controller carries it on)."""
        from rollout.strategies import plan as make_plan

        if version.name != self.model:
            raise BadInput(f"reference {version.ref} is for model {version.name!r} but the spec is for {self.model!r}")
        steps = plan if plan is not None else make_plan(self.spec)  # validate before taking the lock
        self.detached = detach
        with self._hold():
            run = self._run()
            lifecycle.retire_due(run, keep={version.version})
            active = run.ms.rollout if run.ms.rollout and run.ms.rollout.phase.active else None
            if active is not None and active.candidate.version == version.version:
                # Resumed: its registry gate was checked (and recorded) when it began.
                if not self._resume(run):
                    return run.ms
                return self._drive()
            if active is not None and not supersede:
                raise RolloutInProgress(
                    f"a rollout of {self.model}:{active.candidate.version} is {active.phase.value.lower()}; "
                    f"finish it (rollout promote/abort {self.model}) or pass --supersede")
            if run.ms.stable is None and active is None:
                self._adopt(run)  # before the registry gate: it compares with the stable
            noop = run.ms.stable is not None and run.ms.stable.version == version.version
            # The registry gate, before anything is deployed or moved (issue 11); recorded either way.
            decision = None if noop else registry_gate.check(self.spec.registry, version, run.ms.stable)
            gate = lifecycle.gate_record(run, version, self.spec, decision) if decision is not None else None
            if gate is not None and gate.outcome == "failed":
                lifecycle.reject(run, version, self.spec, steps if run.ms.stable is not None else [], gate)
                if active is not None:  # recorded in history; the rollout it would supersede goes on untouched
                    raise registry_gate.RegistryGateRefused(f"{gate.reason}; the rollout of "
                                                            f"{active.candidate.version} goes on")
                return run.ms
            if active is not None:
                lifecycle.end(run, Phase.ABORTED, f"superseded by {version.version}", retire_candidate=True)
            if run.ms.stable is None:
                lifecycle.begin_initial(run, version, self.spec, gate)
            elif noop:
                self.noop = True
                restored = serving.restore_stable(run)
                if restored:
                    run.emit("repaired", f"{version.ref} is already the stable version, but it was not served: "
                             + "; ".join(restored))
                else:
                    run.emit("noop", f"{version.ref} is already the stable version; nothing to do")
                return run.ms
            else:
                lifecycle.begin(run, version, self.spec, steps, gate)
            return self._drive()

    def _adopt(self, run: Run) -> None:
        """A model with no stable on record whose platform already serves a version: adopt
        it (rollout/engine/lifecycle.py: adopt). Its files come from the registry; a served
        version the registry does not have stops the start before anything moves."""
        served = self.s.platform.get_traffic()
        if served is None or served.stable is None:
            return
        try:
            found = self.s.resolve(self.model, served.stable)
        except NotFound as exc:
            raise NotFound(f"{self.model} has no rollout state here, but the platform already serves "
                           f"{self.model}:{served.stable}, which cannot be adopted as stable: {exc}. Nothing was "
                           f"changed; publish that version again, or stop it (`rollout local down {self.model}`) "
                           "to make this a first deployment") from None
        lifecycle.adopt(run, served, found)
        self.adopted = served.stable

    def promote(self, version: str | None = None, full: bool = False) -> ModelState:
        """Pass the current pause, gate or inconclusive analysis; with ``full``, skip to promotion."""
        return self._command("promote_full" if full else "promote", version)

    def abort(self) -> ModelState:
        """Traffic back to stable; the candidate keeps running for inspection. With no
        usable state, from what the platform serves (``from_platform``)."""
        return self._command("abort", None)

    def rollback(self, to: str | None = None) -> ModelState:
        """Restore the previous stable (or ``to``, one of the earlier stables) now, without
        analysis. With no usable state, all traffic to the stable the platform serves."""
        try:
            with self._hold():
                try:
                    run = self._run()
                except StateDamaged as exc:
                    return self._from_platform("rollback", to, f"its state is damaged ({exc})")
                if run.ms.revision == 0:
                    return self._from_platform("rollback", to, "it has no rollout state here")
                target = to or (run.ms.previous[0].version if run.ms.previous else None)
                lifecycle.retire_due(run, keep={target} if target else set())
                r = run.ms.rollout
                if r is not None and r.phase.active:
                    if to is None or (r.stable is not None and to == r.stable.version):
                        lifecycle.end(run, Phase.ROLLED_BACK, f"rolled back by {self.holder}", retire_candidate=True)
                        return run.ms
                    lifecycle.end(run, Phase.ROLLED_BACK, f"rolled back to {to} by {self.holder}", retire_candidate=True)
                lifecycle.begin_rollback(run, to, self.spec)
                return self._settle()
        except Locked:
            if to is not None:
                raise
            return self._request("rollback", None)

    def exit_code(self, ms: ModelState) -> int:
        """The CLI's exit code for what a command left behind (DESIGN.md)."""
        return self.result(ms).exit_code

    def result(self, ms: ModelState) -> CommandResult:
        return CommandResult(ms, noop=self.noop, handed_over=self.handed_over, detached=self.detached)

    # ------------------------------------------------------------------ internals

    def _run(self) -> Run:
        return self.reconciler.run_for(self.model)

    def _hold(self) -> contextlib.ExitStack:
        """The model's lock. A controller holds it for one reconcile pass, so that holder is
        waited out (up to ``request_timeout_s``); any other holder raises Locked at once, as
        before (exit 5, or a request left in the state for promote/abort/rollback)."""
        deadline = self.s.clock.now() + self.s.request_timeout_s
        unnamed_until = self.s.clock.now() + 2.0
        while True:
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(self.s.store.lock(self.model, self.holder))
                return stack
            except Locked as exc:
                now = self.s.clock.now()
                # An unnamed holder: one caught between taking the lock and writing its
                # record (or clearing it and letting go); a moment later it is named or gone.
                brief = held_for_one_pass(exc.holder) or (exc.holder == UNNAMED_HOLDER and now < unnamed_until)
                if not brief or now >= deadline:
                    raise
            self.s.clock.sleep(min(self.s.poll_s, 0.2))

    def _resume(self, run: Run) -> bool:
        """A start of the version in progress; False if there is nothing to drive (a manual pause)."""
        r = run.rollout
        step = r.current_step()
        stored = run.spec
        if stored.model_dump(mode="json") != self.spec.model_dump(mode="json"):
            run.emit("warning", "the spec given differs from the one this rollout started with; continuing with "
                                "the stored one (abort, then start again, to use the new spec)", r.step_index)
        if r.phase is Phase.PAUSED:
            if isinstance(step, PauseStep) and step.seconds is None:
                failed = lifecycle.ensure_running(run)
                if failed:
                    lifecycle.end(run, Phase.FAILED, failed, retire_candidate=True)
                    return False
                try:
                    if serving.restore_split(run):
                        run.save()
                except (PlatformError, BadInput) as exc:
                    run.emit("warning", f"the recorded split could not be put back on the router: {exc}", r.step_index)
                run.emit("paused", f"still waiting for `rollout promote {self.model}:{r.candidate.version}`", r.step_index)
                return False
            r.phase, r.step_started_at = Phase.PROGRESSING, None  # retry the analysis or gate
            run.emit("resumed", f"retrying step {r.step_index + 1}/{len(r.plan)} "
                                f"({step.describe() if step else 'end'})", r.step_index)
        else:
            run.emit("resumed", f"resuming {r.candidate.version} at step {r.step_index + 1}/{len(r.plan)} "
                                f"({step.describe() if step else 'end'})", r.step_index)
        run.save()
        return True

    def _drive(self) -> ModelState:
        """Reconcile and wait until the rollout ends or pauses (or once, detached)."""
        if self.detached:
            return self.reconciler.reconcile(self.model).state
        return self._settle()

    def _settle(self) -> ModelState:
        clock = self.s.clock
        while True:
            result = self.reconciler.reconcile(self.model)
            r = result.state.rollout
            if r is None or r.phase is not Phase.PROGRESSING:
                return result.state
            wake = result.wake_at if result.wake_at is not None else clock.now() + self.s.poll_s
            clock.sleep(max(0.0, min(wake - clock.now(), self.s.poll_s)))

    def _command(self, request: Request, version: str | None) -> ModelState:
        try:
            with self._hold():
                return self._act(request, version)
        except Locked:
            return self._request(request, version)

    def _from_platform(self, request: str, to: str | None, why: str) -> ModelState:
        """Abort or rollback with no usable state: the platform's own view (what the router
        or the cluster serves) says which version is stable; all traffic goes there. The
        candidate is kept running (abort) or retired (rollback). Nothing is written to the
        state: the next `rollout start` adopts what is served."""
        if request not in ("abort", "rollback"):
            raise NotFound(f"cannot {request.replace('_full', '')} {self.model}: {why}; only abort and rollback "
                           "work without state")
        platform = self.s.platform
        ms = ModelState(model=self.model)
        run = self.reconciler.run_for(self.model, state=ms)
        served = platform.get_traffic()
        if served is None or served.stable is None:
            raise NotFound(f"cannot {request} {self.model}: {why}, and the {platform.name} platform serves no version "
                           "of it either; nothing to do")
        if to is not None and to != served.stable:
            raise NotFound(f"cannot roll {self.model} back to {to}: {why}, so there is no record that {to} was ever "
                           f"stable here; the platform serves {served.stable} as stable")
        was = (f"{served.candidate} at {served.weight}%" + (f" (mirror {served.mirror}%)" if served.mirror else "")
               if served.candidate else None)
        if not platform.health(served.stable).ready:
            platform.deploy(self.s.resolve(self.model, served.stable), getattr(self.spec.platform, "replicas", 1))
        platform.set_traffic(Traffic(stable=served.stable))
        kept = ""
        if served.candidate and served.candidate != served.stable:
            if request == "rollback":
                try:
                    platform.retire(served.candidate)
                    kept = f"; {served.candidate} retired"
                except Exception as exc:  # traffic is already safe; the cleanup is reported, not fatal
                    kept = f"; {served.candidate} could not be retired: {exc}"
            else:
                kept = f"; {served.candidate} kept running for inspection"
        self.from_platform = True
        run.emit("aborted" if request == "abort" else "rolled_back",
                 f"{self.model}: {why}, so the {platform.name} platform's own view was used: it served "
                 f"{served.stable} as stable" + (f" and {was}" if was else "") + f"; all traffic now on "
                 f"{served.stable}{kept}. No state was written; the next `rollout start` adopts {served.stable}"
                 + (" once the damaged state file is moved aside" if "damaged" in why else ""))
        return ms

    def _act(self, request: Request, version: str | None) -> ModelState:
        """Carry out promote / abort / rollback of the active rollout; the lock is held."""
        try:
            run = self._run()
        except StateDamaged as exc:
            return self._from_platform(request, None, f"its state is damaged ({exc})")
        if run.ms.revision == 0 and request in ("abort", "rollback"):
            return self._from_platform(request, None, "it has no rollout state here")
        r = run.ms.rollout
        if r is None or not r.phase.active:
            last = f" (last rollout: {r.candidate.version} {r.phase.value})" if r else ""
            raise NotFound(f"no rollout of {self.model!r} is in progress to {request.replace('_full', '')}{last}")
        mailbox.check_version(self.model, r, version)
        lifecycle.check_request(self.model, r, request)
        r.request, r.requested_by = request, self.holder
        mailbox.apply(run, by=self.holder)
        if request in ("promote", "promote_full"):
            return self._settle()
        return run.ms

    def _request(self, request: Request, version: str | None) -> ModelState:
        """Another process holds the lock: leave a request in the state and wait for it to
        act. If that process goes away first (it paused, or was killed), act here instead."""
        rollout_id = mailbox.leave(self.s.store, self.model, request, self.holder, version)
        deadline = self.s.clock.now() + self.s.request_timeout_s

        def taken(ms: ModelState) -> bool:
            r = ms.rollout
            return r is None or r.id != rollout_id or r.request is None or not r.phase.active

        while self.s.clock.now() < deadline:
            self.s.clock.sleep(min(self.s.poll_s, 0.2))
            ms = self.s.store.load(self.model)
            if taken(ms):
                self.handed_over = True
                return ms
            try:
                # Not _hold(): this loop already waits, and a pass of a controller may apply
                # the request; it is read again under the lock so it is never applied twice.
                with self.s.store.lock(self.model, self.holder):  # the holder is gone: act ourselves
                    ms = self.s.store.load(self.model)
                    if taken(ms):
                        self.handed_over = True
                        return ms
                    return self._act(request, version)
            except Locked:
                continue
        raise Locked(self.model, "the running rollout, which has not acted on the request yet "
                     f"({request} is recorded and will be applied when it next looks)")
