"""The `router` metric provider: reads the local router's own counters over a window.

It needs nothing else installed, which is what makes `rollout demo` work out of the box.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import requests

from rollout.analysis.base import Measurement, QueryContext

QUERIES = ("error_rate", "request_rate", "requests", "errors", "latency_mean_ms", "latency_p50_ms",
           "latency_p90_ms", "latency_p99_ms", "agreement")


class RouterProvider:
    name = "router"

    def __init__(self, base_url: Callable[[], str | None] | str | None, timeout_s: float = 5.0) -> None:
        self._base_url = base_url if callable(base_url) else (lambda: base_url)
        self.timeout_s = timeout_s

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        if query not in QUERIES:
            return Measurement.failed(f"unknown router query {query!r}; known: {', '.join(QUERIES)}")
        url = self._base_url()
        if not url:
            return Measurement.failed("the model has no running router")
        try:
            resp = requests.get(f"{url}/router/stats", params={"window_s": max(1, math.ceil(ctx.window_s))}, timeout=self.timeout_s)
            resp.raise_for_status()
            stats = resp.json()
        except requests.Timeout:
            return Measurement.failed(f"router at {url} did not answer within {self.timeout_s:g}s", kind="timeout")
        except requests.RequestException as exc:
            return Measurement.failed(f"router at {url} unavailable ({type(exc).__name__})", kind="unreachable")
        except ValueError:
            return Measurement.failed(f"router at {url} answered with unreadable JSON", kind="bad_answer")
        v = stats.get("versions", {}).get(ctx.version)
        if not v:
            return Measurement.no_data(f"version {ctx.version} served no requests in the last {ctx.window_s:.0f}s",
                                       kind="zero_requests")
        return self._extract(query, v, ctx)

    @staticmethod
    def _extract(query: str, v: dict, ctx: QueryContext) -> Measurement:
        requests_n = float(v.get("requests", 0))
        errors_n = float(v.get("errors", 0))
        detail = {"requests": requests_n, "errors": errors_n}
        if query == "requests":
            return Measurement.of(requests_n, detail)
        if query == "errors":
            return Measurement.of(errors_n, detail)
        if query == "request_rate":
            return Measurement.of(requests_n / max(1.0, ctx.window_s), detail)
        if query == "agreement":
            mirror = v.get("mirror", {})
            agree, disagree = float(mirror.get("agree", 0)), float(mirror.get("disagree", 0))
            if agree + disagree == 0:
                return Measurement.no_data("no mirrored request was compared", kind="zero_requests")
            return Measurement.of(agree / (agree + disagree), {"agree": agree, "disagree": disagree})
        if requests_n == 0:
            return Measurement.no_data(f"version {ctx.version} served no requests", kind="zero_requests")
        if query == "error_rate":
            return Measurement.of(errors_n / requests_n, detail)
        key = {"latency_mean_ms": "mean", "latency_p50_ms": "p50", "latency_p90_ms": "p90", "latency_p99_ms": "p99"}[query]
        return Measurement.of(v.get("latency_ms", {}).get(key), detail)
