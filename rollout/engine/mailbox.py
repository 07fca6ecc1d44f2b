"""Requests from other processes. A command that cannot take the model's lock (a run or
the controller holds it) leaves ``promote`` / ``promote_full`` / ``abort`` / ``rollback``
in the state with compare-and-swap; the holder applies it at its next reconcile. A
command that gets the lock acts directly (rollout/engine/facade.py)."""

from __future__ import annotations

from rollout.engine import lifecycle
from rollout.engine.run import Run
from rollout.errors import BadInput, Conflict, NotFound
from rollout.state import Phase, Request, RolloutState, StateStore

ATTEMPTS = 20


def check_version(model: str, r: RolloutState, version: str | None) -> None:
    if version is not None and version != r.candidate.version:
        raise BadInput(f"the rollout in progress is of {r.candidate.version}, not {version}")


def leave(store: StateStore, model: str, request: Request, by: str, version: str | None) -> str:
    """Write ``request`` into the active rollout (CAS, retried); returns the rollout's id.
    Refuses at once what the holder would refuse, so a bad request never reaches it."""
    for _ in range(ATTEMPTS):
        ms = store.load(model)
        r = ms.rollout
        if r is None or not r.phase.active:
            raise NotFound(f"no rollout of {model!r} is in progress (and another command holds the lock)")
        check_version(model, r, version)
        lifecycle.check_request(model, r, request)
        r.request, r.requested_by = request, by
        try:
            store.save(ms)
            return r.id
        except Conflict:
            continue
    raise Conflict(f"could not leave {request} in the state of {model!r}: it keeps changing")


def pending(run: Run) -> bool:
    """Adopt a request written since ``run`` loaded the state; True if one is pending."""
    fresh = run.s.store.load(run.model)
    f, r = fresh.rollout, run.ms.rollout
    if r is not None and f is not None and f.id == r.id and f.request and not r.request:
        r.request, r.requested_by = f.request, f.requested_by
    return r is not None and r.request is not None


def apply(run: Run, by: str | None = None) -> None:
    """Carry out the request in ``run``'s active rollout (the caller holds the lock)."""
    r = run.rollout
    request, who = r.request, by or r.requested_by or "another command"
    assert request is not None
    r.request = r.requested_by = None
    if request == "abort":
        lifecycle.end(run, Phase.ABORTED, f"aborted by {who}", retire_candidate=False)
    elif request == "rollback":
        lifecycle.end(run, Phase.ROLLED_BACK, f"rolled back by {who}", retire_candidate=True)
    else:
        try:
            lifecycle.apply_promote(run, request == "promote_full", by=who)
        except BadInput as exc:  # another command's mistake must not stop this run
            run.emit("warning", f"ignored {request} from {who}: {exc}", run.rollout.step_index)
            run.save()
