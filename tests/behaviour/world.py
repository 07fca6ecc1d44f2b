"""A model's world in virtual time: the in-memory store, a simulated platform, a scripted
provider and a recording listener, wired to the real engine (rollout/testing.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollout.engine import Engine, Reconciler, Services
from rollout.gates import GateResult
from rollout.registry.base import ModelVersion
from rollout.spec import RolloutSpec, parse_spec
from rollout.state import ModelState
from rollout.testing import Faults, MemoryStore, RecordingListener, ScriptedProvider, SimPlatform, VirtualClock

MODEL = "fraud"
GOOD = {"v1": 0.01, "v2": 0.01, "v3": 0.01}
ERROR_RATE = {"name": "error-rate", "provider": "sim", "query": "error_rate",
              "judge": {"type": "threshold", "max": 0.05}}


def make_spec(strategy: dict[str, Any] | None = None, metrics: list[dict[str, Any]] | None = None,
              **analysis: Any) -> RolloutSpec:
    return parse_spec({
        "model": MODEL, "registry": {"type": "git", "url": "/nonexistent"},
        "strategy": strategy or {"type": "canary", "weights": [20, 50]},
        "analysis": {"interval_s": 10, "duration_s": 30,
                     "metrics": [ERROR_RATE] if metrics is None else metrics, **analysis},
    })


def version(v: str) -> ModelVersion:
    return ModelVersion(MODEL, v, f"sim://{v}")


@dataclass
class World:
    spec: RolloutSpec
    script: dict[str, Any] = field(default_factory=lambda: dict(GOOD))
    gate_answers: list[bool] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.clock = VirtualClock()
        self.store = MemoryStore(self.faults)
        self.platform = SimPlatform(MODEL, self.faults)
        self.provider = ScriptedProvider({"error_rate": self.script})
        self.listener = RecordingListener()
        self.gate_calls: list[tuple[str, str]] = []

    def gate(self, step: Any, payload: dict[str, Any]) -> GateResult:
        self.gate_calls.append((step.name, step.hook))
        ok = self.gate_answers.pop(0) if self.gate_answers else True
        return GateResult(ok, "HTTP 200" if ok else "HTTP 503")

    def services(self, **over: Any) -> Services:
        return Services(store=self.store, platform=self.platform, providers={"sim": self.provider},
                        clock=self.clock, gate=self.gate, listeners=[self.listener], poll_s=5.0, **over)

    def engine(self, command: str = "start", spec: RolloutSpec | None = None) -> Engine:
        return Engine(spec or self.spec, self.services(), command=command)

    def engine_with(self, command: str = "start", **services: Any) -> Engine:
        """An engine whose services differ (a registry resolver, say)."""
        return Engine(self.spec, self.services(**services), command=command)

    def start(self, v: str, **kw: Any) -> ModelState:
        return self.engine().start(version(v), **kw)

    def reconciler(self) -> Reconciler:
        return Reconciler(self.services(), "test controller")

    def state(self) -> ModelState:
        return self.store.load(MODEL)

    def serving(self, v: str = "v1") -> "World":
        self.start(v)
        return self
