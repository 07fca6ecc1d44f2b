"""The one traffic generator: Open Inference Protocol requests against an endpoint,
recorded per request (which version answered, the status the caller saw, the latency).

Two shapes, because callers need two: ``LoadGenerator`` is paced (a bounded rate from a
few threads, in the background while a rollout runs: the demo, the process-level tests,
the fault bench), and ``run``/``burst`` send N requests as fast as ``concurrency``
clients allow (splits checked from the client side, the router's behaviour under load).
Both record the same ``Sample``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import requests

from rollout.demo.models import iris_request
from rollout.platforms.local.routing import VERSION_HEADER


@dataclass(frozen=True)
class Sample:
    at: float  # wall-clock time the request was sent
    status: int  # HTTP status, 0 for a connection failure
    version: str | None  # the version that answered (router header, else model_version)
    latency_s: float
    error: str | None = None  # the start of a 5xx body or the client-side failure

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1000.0


def answered_by(status: int, headers: Mapping[str, str], body: bytes) -> str | None:
    """The version that answered: the router's header, else the answer's model_version."""
    version = headers.get(VERSION_HEADER)
    if version is None and 200 <= status < 300:
        try:
            version = json.loads(body).get("model_version")
        except (ValueError, AttributeError):
            version = None
    return version


@dataclass
class LoadGenerator:
    """Sends requests to ``url`` at about ``rate_per_s`` from ``workers`` threads until stopped."""

    url: str  # the model's infer URL, e.g. http://127.0.0.1:8080/v2/models/iris/infer
    rate_per_s: float = 50.0
    workers: int = 4
    timeout_s: float = 10.0
    max_requests: int = 200_000
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._count = 0

    def start(self) -> "LoadGenerator":
        for i in range(self.workers):
            t = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"loadgen-{i}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 1)
        return self.snapshot()

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _work(self, worker: int) -> None:
        session = requests.Session()
        interval = self.workers / self.rate_per_s
        next_at = time.monotonic() + (worker * interval / self.workers)
        i = worker
        while not self._stop.is_set():
            with self._lock:
                if self._count >= self.max_requests:
                    return
                self._count += 1
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + interval, time.monotonic() - interval)
            self._record(session, i)
            i += self.workers

    def _record(self, session: requests.Session, i: int) -> None:
        started = time.monotonic()
        at = time.time()
        try:
            resp = session.post(self.url, data=json.dumps(iris_request(1, seed=i)),
                                headers={"content-type": "application/json"}, timeout=self.timeout_s)
            sample = Sample(at, resp.status_code, answered_by(resp.status_code, resp.headers, resp.content),
                            time.monotonic() - started,
                            resp.text[:200] if resp.status_code >= 500 else None)
        except requests.RequestException as exc:
            sample = Sample(at, 0, None, time.monotonic() - started, type(exc).__name__)
        with self._lock:
            self.samples.append(sample)


async def burst(
    url: str,
    n: int,
    concurrency: int = 8,
    body: Callable[[int], dict[str, Any]] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> list[Sample]:
    """Send ``n`` POSTs to ``url`` from ``concurrency`` clients as fast as they are
    answered; ``body(i)`` builds the i-th request (default: one iris row)."""
    make = body or (lambda i: iris_request())
    own = session is None
    sess = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    samples: list[Sample] = []
    next_index = iter(range(n))

    async def client() -> None:
        for i in next_index:
            samples.append(await _one(sess, url, make(i)))

    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        if own:
            await sess.close()
    return samples


async def _one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> Sample:
    at, started = time.time(), time.perf_counter()
    try:
        async with session.post(url, json=payload) as resp:
            data = await resp.read()
            status, headers = resp.status, resp.headers
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Sample(at, 0, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    error = data.decode(errors="replace")[:200] if status >= 500 else None
    return Sample(at, status, answered_by(status, headers, data), time.perf_counter() - started, error)


def run(url: str, n: int, concurrency: int = 8, body: Callable[[int], dict[str, Any]] | None = None) -> list[Sample]:
    """Blocking ``burst``."""
    return asyncio.run(burst(url, n, concurrency, body))
