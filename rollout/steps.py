"""The steps a plan is made of. Strategies produce them; the engine executes them.

Steps are data (pydantic, JSON-serialisable) because the plan is stored in the
rollout state: a resumed run executes the plan it started with, not a re-derived one.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def describe(self) -> str:  # pragma: no cover - overridden
        return self.kind  # type: ignore[attr-defined]


class TrafficStep(_Step):
    """Desired split: candidate weight 0-100, mirror percent 0-100."""

    kind: Literal["traffic"] = "traffic"
    weight: int = Field(ge=0, le=100)
    mirror: int = Field(0, ge=0, le=100)
    replicas: int | None = None

    def describe(self) -> str:
        return f"traffic weight={self.weight}%" + (f" mirror={self.mirror}%" if self.mirror else "")


class PauseStep(_Step):
    """Wait; ``seconds=None`` waits until `rollout promote`."""

    kind: Literal["pause"] = "pause"
    seconds: float | None = None

    def describe(self) -> str:
        return "pause until promoted" if self.seconds is None else f"pause {self.seconds:g}s"


class AnalysisStep(_Step):
    """Measure the named metrics for ``duration_s`` and judge them."""

    kind: Literal["analysis"] = "analysis"
    metrics: tuple[str, ...]
    duration_s: float = Field(ge=0)
    preview: bool = False  # blue-green: traffic comes through the preview endpoint

    def describe(self) -> str:
        return f"analysis {self.duration_s:g}s" + (" (preview)" if self.preview else "")


class GateStep(_Step):
    """Call a webhook; a non-2xx answer stops the rollout there.

    ``hook`` says what a refusal means (rollout/gates.py): a plain ``gate`` and the
    confirm-* hooks wait (re-asked for ``wait_s``, None = until confirmed, then paused);
    ``pre-rollout`` rolls back. The URL is ``url``, or read when calling from the
    environment variable ``url_env`` / the file ``url_file``; ``builtin`` names a check
    rollout runs itself."""

    kind: Literal["gate"] = "gate"
    name: str
    url: str = ""
    timeout_s: float = 10.0
    hook: Literal["gate", "confirm-rollout", "pre-rollout", "confirm-traffic-increase", "confirm-promotion"] = "gate"
    url_env: str | None = None
    url_file: str | None = None
    builtin: Literal["samples"] | None = None
    retries: int = 0
    wait_s: float | None = 0.0
    metadata: dict[str, str] = Field(default_factory=dict)

    def describe(self) -> str:
        return f"gate {self.name}" + (f" ({self.hook})" if self.hook != "gate" else "")


class PromoteStep(_Step):
    """Make the candidate the stable version."""

    kind: Literal["promote"] = "promote"

    def describe(self) -> str:
        return "promote"


class ScaleDownStep(_Step):
    """Retire the old stable ('previous') or the candidate, after a delay that keeps
    rollback instant."""

    kind: Literal["scale_down"] = "scale_down"
    version: Literal["previous", "candidate"]
    after_s: float = Field(0.0, ge=0)

    def describe(self) -> str:
        return f"scale down {self.version}" + (f" after {self.after_s:g}s" if self.after_s else "")


Step = Annotated[
    Union[TrafficStep, PauseStep, AnalysisStep, GateStep, PromoteStep, ScaleDownStep],
    Field(discriminator="kind"),
]
