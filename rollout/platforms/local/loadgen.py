"""A small V2 load generator: N concurrent clients sending infer requests.

Used by the demo to give an analysis something to measure, by the tests to check
splits, and by ``bench/router.py``. Each result records which version answered
(``model_version`` of the response), so a split can be checked from the client side.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from rollout.demo_models import iris_request


@dataclass(frozen=True)
class Result:
    status: int  # HTTP status; 0 when the request itself failed (connection error)
    version: str | None  # model_version of the answer, if it was JSON with one
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int  # status 0 or >= 500
    client_errors: int  # status 0 only: the request never got an HTTP answer
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    by_version: dict[str, int]


async def send(
    url: str,
    n: int,
    concurrency: int = 8,
    body: Callable[[int], dict[str, Any]] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> list[Result]:
    """Send ``n`` POSTs to ``url`` from ``concurrency`` workers; ``body(i)`` builds the
    i-th request (default: one iris row)."""
    make = body or (lambda i: iris_request())
    own = session is None
    sess = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    results: list[Result] = []
    next_index = iter(range(n))

    async def worker() -> None:
        for i in next_index:
            results.append(await _one(sess, url, make(i)))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        if own:
            await sess.close()
    return results


async def _one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> Result:
    started = time.perf_counter()
    try:
        async with session.post(url, json=payload) as resp:
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Result(0, None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000
    version = None
    if status == 200:
        try:
            version = json.loads(data).get("model_version")
        except ValueError:
            pass
    return Result(status, version, latency_ms, None if status < 500 else data.decode(errors="replace")[:200])


def run(url: str, n: int, concurrency: int = 8, body: Callable[[int], dict[str, Any]] | None = None) -> list[Result]:
    """Blocking wrapper of ``send``."""
    return asyncio.run(send(url, n, concurrency, body))


def summarize(results: list[Result], duration_s: float) -> Summary:
    latencies = sorted(r.latency_ms for r in results)
    by_version: dict[str, int] = {}
    for r in results:
        if r.version:
            by_version[r.version] = by_version.get(r.version, 0) + 1

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return Summary(
        requests=len(results),
        errors=sum(1 for r in results if r.status == 0 or r.status >= 500),
        client_errors=sum(1 for r in results if r.status == 0),
        duration_s=duration_s,
        rps=len(results) / duration_s if duration_s > 0 else float("nan"),
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        by_version=by_version,
    )
