"""In-memory parts for running the engine in virtual time: for the project's behaviour
tests, for bench/, and for users testing their own specs and plug-ins.

- ``MemoryStore``: the StateStore contract (CAS on ``revision``, a per-model lock naming
  its holder) whose ``load`` and ``save`` return DEEP copies, so no engine code can
  depend on sharing objects with the store.
- ``SimPlatform``: a platform that only records (running versions, the split, retired
  versions); a version can be made unhealthy or undeployable.
- ``ScriptedProvider``: a metric provider answering from a script per (query, version).
- ``RecordingListener``: every event, with the phase at that moment.
- ``Faults``: raise ``SimulatedCrash`` at the Nth call to the store or the platform, to
  test that a run killed at any transition resumes to the same outcome.
- ``VirtualClock`` (from rollout.clock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from rollout.analysis.base import Measurement, QueryContext
from rollout.clock import VirtualClock
from rollout.errors import Conflict, DeployError, Locked, PlatformError
from rollout.platforms.base import Capabilities, Health, Traffic
from rollout.registry.base import ModelVersion
from rollout.state import Event, LockHolder, ModelState, Phase

__all__ = ["Faults", "MemoryStore", "RecordingListener", "ScriptedProvider", "SimPlatform", "SimulatedCrash",
           "VirtualClock"]


class SimulatedCrash(BaseException):
    """A process dying at this instant (BaseException: no `except Exception` catches it)."""


@dataclass
class Faults:
    """Counts calls to the store and the platform; at call number ``crash_at`` (0-based)
    raises SimulatedCrash, before the call takes effect (``after=False``) or after."""

    crash_at: int | None = None
    after: bool = False
    calls: list[str] = field(default_factory=list)

    def call(self, what: str, effect: Callable[[], object]) -> object:
        index = len(self.calls)
        self.calls.append(what)
        if index == self.crash_at and not self.after:
            raise SimulatedCrash(f"crash before {what} (call {index})")
        result = effect()
        if index == self.crash_at and self.after:
            raise SimulatedCrash(f"crash after {what} (call {index})")
        return result


class MemoryStore:
    def __init__(self, faults: Faults | None = None) -> None:
        self._states: dict[str, tuple[int, str]] = {}  # model -> (revision, JSON): nothing is shared with a caller
        self._holders: dict[str, str] = {}
        self.faults = faults
        self.saves = 0

    def load(self, model: str) -> ModelState:
        stored = self._states.get(model)
        return ModelState.model_validate_json(stored[1]) if stored is not None else ModelState(model=model)

    def save(self, state: ModelState) -> ModelState:
        def write() -> ModelState:
            current = self._states[state.model][0] if state.model in self._states else 0
            if current != state.revision:
                raise Conflict(f"state of {state.model!r} changed (revision {current}, expected {state.revision})")
            data = state.model_copy(update={"revision": state.revision + 1}).model_dump_json()
            self._states[state.model] = (state.revision + 1, data)
            self.saves += 1
            return ModelState.model_validate_json(data)  # a fresh deep copy, never the caller's objects

        return self.faults.call("store.save", write) if self.faults else write()  # type: ignore[return-value]

    @contextlib.contextmanager
    def lock(self, model: str, holder: str) -> Iterator[None]:
        if model in self._holders:
            raise Locked(model, self._holders[model])
        self._holders[model] = holder
        try:
            yield
        finally:
            self._holders.pop(model, None)

    def holder(self, model: str) -> LockHolder | None:
        words = self._holders.get(model)
        return LockHolder(words, alive=True) if words is not None else None

    def models(self) -> list[str]:
        return sorted(self._states)

    def revisions(self) -> dict[str, str]:
        return {m: str(revision) for m, (revision, _) in self._states.items()}


class SimPlatform:
    """Records what the engine asked for. ``broken``: versions whose deploy fails;
    ``unhealthy``: versions that report not ready; ``on_call``: called with the name of
    every deploy / set_traffic / retire (e.g. to let virtual time pass, as a real
    platform takes time)."""

    name = "sim"

    def __init__(self, model: str = "fraud", faults: Faults | None = None,
                 on_traffic: Callable[[Traffic], None] | None = None) -> None:
        self.model = model
        self.faults = faults
        self.running: set[str] = set()
        self.traffic: Traffic | None = None
        self.history: list[Traffic] = []
        self.retired: list[str] = []
        self.broken: set[str] = set()
        self.unhealthy: set[str] = set()
        self.on_traffic = on_traffic
        self.on_call: Callable[[str], None] | None = None
        self.router_down = False  # the data plane died (set it to simulate a killed router)
        self.router_restarts = 0

    def _do(self, what: str, effect: Callable[[], object]) -> object:
        if self.on_call is not None:
            self.on_call(what)
        return self.faults.call(what, effect) if self.faults else effect()

    def capabilities(self) -> Capabilities:
        return Capabilities(mirror=True, preview=True, exact_weights=True)

    def deploy(self, version: ModelVersion, replicas: int = 1) -> None:
        def effect() -> None:
            if version.version in self.broken:
                raise DeployError(f"{version.ref} never became ready (simulated)")
            self.running.add(version.version)
            self.unhealthy.discard(version.version)

        self._do("platform.deploy", effect)

    def kill(self, version: str) -> None:
        """The version's process died: not ready until deployed again."""
        self.unhealthy.add(version)

    def set_traffic(self, traffic: Traffic) -> None:
        def effect() -> None:
            for v in (traffic.stable, traffic.candidate):  # as a real router: both ends must serve
                if v is not None and (v not in self.running or v in self.unhealthy):
                    raise PlatformError(f"version {v} of {self.model} is not running (simulated); deploy it first")
            if self.router_down:
                self.router_down = False
                self.router_restarts += 1
            self.traffic = traffic
            self.history.append(traffic)
            if self.on_traffic is not None:
                self.on_traffic(traffic)

        self._do("platform.set_traffic", effect)

    def get_traffic(self) -> Traffic | None:
        return None if self.router_down else self.traffic

    def router_health(self) -> Health:
        return Health("router", not self.router_down, "router is down (simulated)" if self.router_down else "")

    def retire(self, version: str) -> None:
        def effect() -> None:
            if version in self.running:
                self.running.discard(version)
                self.retired.append(version)

        self._do("platform.retire", effect)

    def health(self, version: str) -> Health:
        ready = version in self.running and version not in self.unhealthy
        return Health(version, ready, "" if ready else f"{version} is not running (simulated)")

    def endpoint(self) -> str | None:
        return "sim://router" if self.traffic else None

    def preview_endpoint(self) -> str | None:
        return "sim://preview" if self.traffic and self.traffic.candidate else None

    def running_versions(self) -> list[str]:
        return sorted(self.running)


Script = float | None | Measurement | Sequence[float | None | Measurement] | Callable[[QueryContext, int], Measurement]


class ScriptedProvider:
    """Answers ``query`` for a version from ``script[query][version]`` (or ``script[version]``
    for any query): a value, a list consumed one per call (the last repeats), a
    Measurement, None (no data), or a function of (ctx, call number)."""

    name = "scripted"

    def __init__(self, script: Mapping[str, Script | Mapping[str, Script]]) -> None:
        self.script = script
        self.calls: dict[tuple[str, str], int] = {}

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        entry = self.script.get(query, self.script)
        item = entry.get(ctx.version) if isinstance(entry, Mapping) else entry
        n = self.calls.get((query, ctx.version), 0)
        self.calls[(query, ctx.version)] = n + 1
        if callable(item):
            return item(ctx, n)
        if isinstance(item, Sequence):
            item = item[min(n, len(item) - 1)] if item else None
        if isinstance(item, Measurement):
            return item
        return Measurement.no_data("not scripted") if item is None else Measurement.of(float(item))


@dataclass
class RecordingListener:
    """Every event the engine emitted, with the rollout's phase when it was emitted."""

    events: list[tuple[Event, Phase | None]] = field(default_factory=list)

    def __call__(self, event: Event, ms: ModelState) -> None:
        self.events.append((event, ms.rollout.phase if ms.rollout else None))

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e, _ in self.events]

    def messages(self, kind: str) -> list[str]:
        return [e.message for e, _ in self.events if e.kind == kind]
