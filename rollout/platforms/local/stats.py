"""Windowed per-version request statistics and shadow-answer comparison.

The router keeps one slot per second for ~15 minutes, per version, so analysis can ask
for "the last 30 s" at any step without a Prometheus server. Latencies go into
log-spaced buckets (4% wide) rather than raw samples: memory stays bounded at any
request rate and percentiles are within ~2%.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

HISTORY_S = 900
BUCKET_RATIO = 1.04
BUCKET_MIN_MS = 0.01


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= BUCKET_MIN_MS:
        return 0
    return 1 + int(math.log(latency_ms / BUCKET_MIN_MS) / math.log(BUCKET_RATIO))


def bucket_value_ms(bucket: int) -> float:
    """Representative latency of a bucket: its geometric midpoint."""
    if bucket == 0:
        return BUCKET_MIN_MS
    return BUCKET_MIN_MS * BUCKET_RATIO ** (bucket - 0.5)


# What a request was, as the router classifies it. Inference kinds are what a version's
# numbers are made of; the rest are counted apart so probes and metadata calls never
# dilute an error rate or a latency.
LIVE, PINNED, PREVIEW, SHADOW = "live", "pinned", "preview", "shadow"
HEALTH, METADATA, OTHER = "health", "metadata", "other"
INFERENCE_KINDS = (LIVE, PINNED, PREVIEW, SHADOW)
KINDS = (*INFERENCE_KINDS, HEALTH, METADATA, OTHER)


@dataclass
class Tally:
    """Counts and latencies of one kind of request to one version within one second."""

    requests: int = 0
    errors: int = 0
    connection_errors: int = 0
    timeouts: int = 0
    latency_sum_ms: float = 0.0
    buckets: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    codes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.connection_errors += other.connection_errors
        self.timeouts += other.timeouts
        self.latency_sum_ms += other.latency_sum_ms
        for b, n in other.buckets.items():
            self.buckets[b] += n
        for c, n in other.codes.items():
            self.codes[c] += n

    def summary(self) -> dict[str, Any]:
        n = self.requests
        return {
            "requests": n,
            "errors": self.errors,
            "error_rate": self.errors / n if n else None,
            "connection_errors": self.connection_errors,
            "timeouts": self.timeouts,
            "codes": dict(sorted(self.codes.items())),
            "latency_ms": {
                "mean": self.latency_sum_ms / n if n else None,
                "p50": percentile_ms(self.buckets, 0.50),
                "p90": percentile_ms(self.buckets, 0.90),
                "p99": percentile_ms(self.buckets, 0.99),
            },
        }


@dataclass
class Second:
    """Everything that happened to one version within one wall-clock second."""

    t: int
    kinds: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    mirror: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class VersionStats:
    """A ring of ``HISTORY_S`` per-second slots for one version."""

    def __init__(self) -> None:
        self.ring: list[Second | None] = [None] * HISTORY_S
        self.inflight = 0

    def slot(self, now: float) -> Second:
        t = int(now)
        i = t % HISTORY_S
        s = self.ring[i]
        if s is None or s.t != t:
            s = self.ring[i] = Second(t)
        return s

    def window(self, now: float, window_s: int) -> list[Second]:
        t = int(now)
        lo = t - window_s
        return [s for s in self.ring if s is not None and lo < s.t <= t]


def percentile_ms(buckets: dict[int, int], q: float) -> float | None:
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= rank:
            return bucket_value_ms(b)
    return bucket_value_ms(max(buckets))


class Stats:
    """Per-version windowed stats; ``now`` is injectable so tests run in virtual time.

    ``summary`` gives, per version, the inference it served (live, pinned, preview and
    shadow requests: what analysis judges a version on) at the top level, and every kind
    apart under ``kinds``. A shadow the router gave up on (``shadow_timeout_s``) is the
    shadow's timeout: it shows in ``kinds.shadow.timeouts`` and nowhere in the top level,
    so a slow shadow backlog never becomes the candidate's errors."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.versions: dict[str, VersionStats] = defaultdict(VersionStats)

    def start(self, version: str) -> None:
        self.versions[version].inflight += 1

    def finish(
        self, version: str, code: int | None, latency_ms: float, kind: str = LIVE, *, timed_out: bool = False,
        counted_inflight: bool = True,
    ) -> None:
        """Record one finished request; ``code`` None means the backend was unreachable
        (counted as 502), ``timed_out`` that the router stopped waiting (504);
        ``counted_inflight`` False for a request ``start`` never saw (the nginx front's,
        whose in-flight counts nginx keeps)."""
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; kinds are {KINDS}")
        vs = self.versions[version]
        vs.inflight -= counted_inflight
        tally = vs.slot(self.now()).kinds[_SHADOW_TIMEOUT if kind == SHADOW and timed_out else kind]
        tally.requests += 1
        tally.latency_sum_ms += latency_ms
        tally.buckets[bucket_of(latency_ms)] += 1
        tally.timeouts += timed_out
        if code is None:
            tally.connection_errors += 1
            code = 502
        tally.codes[str(code)] += 1
        tally.errors += code >= 500

    def mirror_result(self, version: str, result: str) -> None:
        self.versions[version].slot(self.now()).mirror[result] += 1

    def summary(self, window_s: int) -> dict[str, Any]:
        now = self.now()
        out: dict[str, Any] = {}
        for version, vs in sorted(self.versions.items()):
            seconds = vs.window(now, window_s)
            kinds: dict[str, Tally] = defaultdict(Tally)
            mirror = {"agree": 0, "disagree": 0, "error": 0, "skipped": 0}
            for s in seconds:
                for kind, tally in s.kinds.items():
                    kinds[kind].add(tally)
                for k, n in s.mirror.items():
                    mirror[k] = mirror.get(k, 0) + n
            inference = Tally()
            for kind in INFERENCE_KINDS:
                inference.add(kinds[kind])
            shadow = Tally()
            shadow.add(kinds[SHADOW])
            shadow.add(kinds[_SHADOW_TIMEOUT])
            by_kind = {kind: (shadow if kind == SHADOW else kinds[kind]).summary() for kind in KINDS}
            out[version] = {
                **inference.summary(),
                "shadow_requests": kinds[SHADOW].requests,
                "preview_requests": kinds[PREVIEW].requests,
                "mirror": mirror,
                "inflight": vs.inflight,
                "kinds": by_kind,
            }
        return out


_SHADOW_TIMEOUT = "shadow-timeout"  # internal: kept out of the inference total


def _values_agree(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_values_agree(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return a == b


def outputs_agree(stable: dict[str, Any], shadow: dict[str, Any], rtol: float, atol: float) -> bool:
    """Compare two V2 responses' ``outputs`` by name: exact for ints, bools and strings,
    within ``rtol``/``atol`` for floats (FP datatypes), and the same shapes."""
    a = {o.get("name"): o for o in stable.get("outputs") or []}
    b = {o.get("name"): o for o in shadow.get("outputs") or []}
    if set(a) != set(b):
        return False
    for name, oa in a.items():
        ob = b[name]
        if oa.get("shape") != ob.get("shape"):
            return False
        da, db = oa.get("data"), ob.get("data")
        if str(oa.get("datatype", "")).startswith("FP") or str(ob.get("datatype", "")).startswith("FP"):
            if not _values_agree(da, db, rtol, atol):
                return False
        elif da != db or oa.get("datatype") != ob.get("datatype"):
            return False
    return True
