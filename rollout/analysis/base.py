"""What analysis is made of: providers measure, judges decide.

Three outcomes of a query are kept apart on purpose: a value, no data (the query ran
and found nothing) and a provider error (we could not ask). Conflating them is what
makes a Prometheus outage look like a bad canary elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Status(str, Enum):
    VALUE = "value"
    NO_DATA = "no_data"
    ERROR = "error"


def not_a_number(value: float) -> str | None:
    """What a non-finite value is, in words (None for a finite one)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


@dataclass(frozen=True)
class Measurement:
    status: Status
    value: float | None = None
    error: str = ""  # why there is no value, scrubbed of secrets
    # Extra numbers a judge may need (e.g. request and error counts for a sequential test).
    detail: Mapping[str, float] = field(default_factory=dict)
    # What kind of no-data or error: empty, nan, zero_requests, timeout, unreachable, http, bad_answer, ...
    kind: str = ""

    @classmethod
    def of(cls, value: float | None, detail: Mapping[str, float] | None = None) -> "Measurement":
        """A value; NaN or an infinity is no data, never a number."""
        if value is None:
            return cls(Status.NO_DATA, detail=detail or {}, error="empty result", kind="empty")
        odd = not_a_number(float(value))
        if odd:
            return cls(Status.NO_DATA, detail=detail or {}, error=f"the value was {odd}", kind="nan")
        clean = {k: float(v) for k, v in (detail or {}).items()}
        bad = [k for k, v in clean.items() if not_a_number(v)]
        if bad:
            return cls(Status.NO_DATA, error=f"{', '.join(bad)} was {not_a_number(clean[bad[0]])}", kind="nan")
        return cls(Status.VALUE, float(value), detail=clean)

    @classmethod
    def no_data(cls, why: str = "", kind: str = "empty") -> "Measurement":
        return cls(Status.NO_DATA, error=why, kind=kind)

    @classmethod
    def failed(cls, why: str, kind: str = "error") -> "Measurement":
        return cls(Status.ERROR, error=why, kind=kind)


class ProviderUnavailable(Exception):
    """The provider could not be asked (connection refused, timeout, 5xx)."""


@dataclass(frozen=True)
class QueryContext:
    """What a query template and a provider may need to know."""

    model: str
    version: str  # the version this query is about
    stable: str | None
    candidate: str | None
    namespace: str = "default"
    window_s: float = 60.0  # the span to aggregate over: time since the analysis step began
    weight: int = 0  # the candidate's configured share during this step
    mirror: int = 0
    preview: bool = False
    # Evidence a judge left in the latest earlier analysis step of this rollout for the
    # metric being judged (the "carry." keys of that step's last record that has them).
    carried: Mapping[str, float] = field(default_factory=dict)
    # This step's earlier cumulative counts of the metric, (seconds since the step began,
    # (candidate requests, candidate bad, stable requests, stable bad)), in time order.
    earlier: tuple[tuple[float, tuple[float, float, float, float]], ...] = ()


class MetricProvider(Protocol):
    name: str

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        """Never raises for an outage: returns a Measurement with status ERROR."""


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    # True when the evidence is already enough to end the step (sequential tests).
    final: bool = False
    # Numbers worth keeping with the measurement (stored; keys starting "carry." are
    # handed back to the judge in later steps through QueryContext.carried).
    detail: Mapping[str, float] = field(default_factory=dict)


class Judge(Protocol):
    # Which versions must be measured: ("candidate",), ("stable",) or ("candidate", "stable").
    roles: tuple[str, ...]

    def decide(self, name: str, measured: Mapping[str, Measurement], ctx: QueryContext) -> Decision:
        """Judge measurements that all have values (no-data and errors never reach a judge)."""
