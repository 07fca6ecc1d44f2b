"""The engine: a reconciler that executes a plan step by step and saves the state after
every transition.

- ``reconcile.Reconciler(services, holder).reconcile(model, now) -> Result(state, wake_at)``
  does what is due now and says when to come back; it never sleeps.
- ``executors.EXECUTORS``: one executor per step type, keyed by ``Step.kind``.
- ``lifecycle``: begin, first deployment, rollback to an earlier stable, finish, end.
- ``mailbox``: requests (promote/abort/rollback) from processes that do not hold the lock.
- ``facade.Engine``: the commands (start, start --detach, promote, abort, rollback).
- ``outcome``: exit codes and CommandResult.

It knows steps, not strategies; everything it does to the world goes through the
Platform, everything it knows is in the ModelState."""

from __future__ import annotations

from rollout.engine.facade import Engine
from rollout.engine.outcome import EXIT_UNHELD, CommandResult, exit_code_for
from rollout.engine.reconcile import Reconciler, Result
from rollout.engine.services import GateCaller, Listener, Services, http_gate
from rollout.registry.base import ModelVersion
from rollout.spec import RolloutSpec
from rollout.state import ModelState


def run_until_settled(spec: RolloutSpec, services: Services, version: ModelVersion,
                      command: str = "start") -> ModelState:
    """Start ``version`` and drive it until it is promoted, rolled back or paused (in
    whatever time the services' clock keeps: virtual time for simulations)."""
    return Engine(spec, services, command=command).start(version)


__all__ = ["EXIT_UNHELD", "CommandResult", "Engine", "GateCaller", "Listener", "Reconciler", "Result", "Services", "exit_code_for",
           "http_gate", "run_until_settled"]
