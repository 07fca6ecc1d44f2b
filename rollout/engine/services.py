"""What the engine talks to, gathered in one value the composition root builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout.analysis.base import MetricProvider
from rollout.clock import Clock, SystemClock
from rollout.errors import NotFound
from rollout.gates import GateResult, call_gate
from rollout.platforms.base import Platform
from rollout.registry.base import ModelVersion
from rollout.state import Event, ModelState, StateStore
from rollout.steps import GateStep

GateCaller = Callable[[GateStep, dict[str, Any]], GateResult]
Listener = Callable[[Event, ModelState], None]
# (model, version) -> the version as the registry has it: used to adopt a version the
# platform already serves when the state is gone (its files are needed to restart it).
Resolver = Callable[[str, str], ModelVersion]


def no_registry(model: str, version: str) -> ModelVersion:
    """The do-nothing resolver: says that nothing can be looked up."""
    raise NotFound(f"{model}:{version} cannot be looked up: this engine was given no registry")

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
    resolve: Resolver = no_registry
    listeners: list[Listener] = field(default_factory=list)
    poll_s: float = 1.0  # how often a waiting run looks for promote/abort requests
    request_timeout_s: float = 120.0  # how long a command waits for the running holder to act
