"""What executing a step once can come to. An executor never sleeps: it acts, or says
when it wants to be asked again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rollout.engine.run import Run
from rollout.state import MeasurementRecord, StepOutcome


@dataclass(frozen=True)
class Done:
    """The step passed; the plan moves on."""

    message: str
    deciding: tuple[MeasurementRecord, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Not finished; ask again at ``until`` (absolute clock time)."""

    until: float


@dataclass(frozen=True)
class Pause:
    """Stop and wait for an operator (promote, abort, or rerun `rollout start`).
    ``outcome`` records how this attempt at the step ended, if it did (an inconclusive analysis)."""

    reason: str
    outcome: StepOutcome | None = None
    deciding: tuple[MeasurementRecord, ...] = ()


@dataclass(frozen=True)
class Fail:
    """The step failed: the rollout is rolled back."""

    reason: str
    outcome: StepOutcome = "failed"
    deciding: tuple[MeasurementRecord, ...] = ()


Outcome = Done | Wait | Pause | Fail


class Executor(Protocol):
    def __call__(self, step: object, run: Run) -> Outcome: ...
