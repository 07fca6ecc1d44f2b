"""What a platform is: where versions run and how traffic is split between them.

A platform object is bound to one model. Every method is idempotent so the engine can
repeat a step after a crash without harm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rollout.registry.base import ModelVersion


@dataclass(frozen=True)
class Traffic:
    """The desired (or observed) split. ``weight`` is the candidate's share, 0-100;
    ``mirror`` the percent of requests copied to the candidate, whose answers are
    discarded."""

    stable: str | None
    candidate: str | None = None
    weight: int = 0
    mirror: int = 0

    def describe(self) -> str:
        """``v1 70%, v2 30%, mirror 10% to v2``: how status and events name a split."""
        text = f"{self.stable} {100 - self.weight}%" + (f", {self.candidate} {self.weight}%" if self.candidate else "")
        return text + (f", mirror {self.mirror}% to {self.candidate}" if self.mirror else "")


@dataclass(frozen=True)
class Health:
    version: str
    ready: bool
    detail: str = ""


@dataclass(frozen=True)
class Capabilities:
    mirror: bool
    preview: bool
    exact_weights: bool  # False where weights are approximated (e.g. replica ratio)


class Router(Protocol):
    """What splits one model's traffic between its versions: the local router process
    (platforms/local/router_control.py) or a Kubernetes Service, HTTPRoute or
    VirtualService (platforms/kubernetes/routers.py). A platform owns one."""

    capabilities: Capabilities

    def set(self, traffic: Traffic) -> None:
        """Apply the split and read it back; raise if the data plane holds another."""

    def read(self) -> Traffic | None:
        """The split the data plane holds, None if nothing is routed."""


class Platform(Protocol):
    name: str
    model: str

    def capabilities(self) -> Capabilities: ...

    def deploy(self, version: ModelVersion, replicas: int = 1) -> None:
        """Start the version (if not running) and return once it is ready.
        Raises DeployError naming the version and why, with nothing left running."""

    def set_traffic(self, traffic: Traffic) -> None:
        """Apply the split; in-flight requests finish where they started."""

    def get_traffic(self) -> Traffic | None:
        """The split as the data plane reports it, None if nothing is deployed."""

    def retire(self, version: str) -> None:
        """Stop the version once it receives no traffic; unknown versions are a no-op."""

    def health(self, version: str) -> Health: ...

    def router_health(self) -> Health:
        """Whether the data plane that splits traffic is up (``version`` "router"). The
        engine checks it on every reconcile; ``set_traffic`` of the recorded split is the
        repair (the local platform restarts its router on the same port)."""

    def endpoint(self) -> str | None:
        """The stable URL clients call (V2 protocol), None if nothing is deployed."""

    def preview_endpoint(self) -> str | None:
        """A URL that reaches only the candidate (blue-green preview), if any."""

    def running_versions(self) -> list[str]: ...
