"""One model's state while the engine works on it: always the copy the store last
returned, so no transition depends on how a store copies objects.

Rule for everything in the engine: read ``run.ms`` / ``run.rollout`` afresh after every
``run.save()``; never keep a nested object across a save (a store may hand back a
deep copy, and changes made to the old one would be lost silently)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rollout.analysis.runner import AnalysisRunner
from rollout.engine.services import Services
from rollout.errors import Conflict
from rollout.platforms.base import Platform
from rollout.spec import RolloutSpec, parse_spec
from rollout.state import Event, ModelState, RolloutState

log = logging.getLogger("rollout.engine")

SAVE_ATTEMPTS = 20


@dataclass
class Memo:
    """What one process remembers between reconciles of one rollout, and may forget
    (a restarted process asks a gate again, checks health at once): never a decision."""

    rollout_id: str | None = None
    spec: RolloutSpec | None = None
    runner: AnalysisRunner | None = None
    attached: bool = False  # this process made sure both versions run and the recorded split is applied
    gate_next_at: dict[int, float] = field(default_factory=dict)
    checks_next_at: float = 0.0
    hooks_next_at: float = 0.0

    def for_rollout(self, rollout_id: str) -> "Memo":
        if self.rollout_id != rollout_id:
            self.__init__()  # type: ignore[misc]
            self.rollout_id = rollout_id
        return self


class Run:
    def __init__(self, model: str, services: Services, holder: str, memo: Memo | None = None,
                 state: ModelState | None = None, now: float | None = None) -> None:
        self.model = model
        self._now = now  # a reconcile may be told what time it is; otherwise the clock says
        self.s = services
        self.holder = holder
        self._memo = memo or Memo()
        self.ms: ModelState = state if state is not None else services.store.load(model)

    # ---------------------------------------------------------------- reading

    @property
    def rollout(self) -> RolloutState:
        r = self.ms.rollout
        assert r is not None, "no rollout in this state"
        return r

    @property
    def platform(self) -> Platform:
        return self.s.platform

    @property
    def memo(self) -> Memo:
        return self._memo.for_rollout(self.rollout.id)

    @property
    def spec(self) -> RolloutSpec:
        """The spec the rollout started with (a resumed rollout is judged by it, not by an edited file)."""
        memo = self.memo
        if memo.spec is None:
            memo.spec = parse_spec(self.rollout.spec, source=f"the stored spec of {self.model}:{self.rollout.candidate.version}")
        return memo.spec

    def runner(self) -> AnalysisRunner:
        memo = self.memo
        if memo.runner is None:
            memo.runner = AnalysisRunner(self.spec.analysis.metrics, self.s.providers)
        return memo.runner

    def replicas(self) -> int:
        return getattr(self.spec.platform, "replicas", 1)

    def now(self) -> float:
        return self._now if self._now is not None else self.s.clock.now()

    # ---------------------------------------------------------------- writing

    def save(self) -> None:
        """Save with CAS. Whoever holds the model's lock is the only writer of
        transitions, so a conflict is a request another command left: adopt it, retry."""
        for _ in range(SAVE_ATTEMPTS):
            try:
                self.ms = self.s.store.save(self.ms)
                return
            except Conflict:
                fresh = self.s.store.load(self.model)
                adopt_request(self.ms, fresh)
                self.ms.revision = fresh.revision
        raise Conflict(f"could not save the state of {self.model!r}: it keeps changing")

    def emit(self, kind: str, message: str, step_index: int | None = None) -> None:
        """Record an event in the rollout (saved with the next transition) and tell the listeners."""
        event = Event(at=self.now(), kind=kind, message=message, step_index=step_index)
        if self.ms.rollout is not None:
            self.ms.rollout.events.append(event)
        log.info("%s %s: %s", self.model, kind, message)
        for listener in self.s.listeners:
            try:
                listener(event, self.ms)
            except Exception:  # a broken listener (printer, notifier) must never stop a rollout
                log.exception("listener failed on %s", kind)


def adopt_request(mine: ModelState, fresh: ModelState) -> None:
    """Carry a request another command wrote into ``fresh`` over to ``mine``."""
    r, f = mine.rollout, fresh.rollout
    if r is not None and f is not None and f.id == r.id and f.request and not r.request:
        r.request, r.requested_by = f.request, f.requested_by
