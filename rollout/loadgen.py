"""Steady Open Inference Protocol traffic against an endpoint, recorded per request.

The demo needs live traffic for the router to measure, and the tests need to know,
per request, which version answered and whether the caller saw an error. Threads with
a requests.Session each keep it simple and dependency-free; the rate is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import requests

from rollout.demo_models import iris_request
from rollout.platforms.local.routing import VERSION_HEADER

@dataclass(frozen=True)
class Sample:
    at: float
    status: int  # HTTP status, 0 for a connection failure
    version: str | None
    latency_s: float


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
            version = resp.headers.get(VERSION_HEADER)
            if version is None and resp.ok:
                try:
                    version = resp.json().get("model_version")
                except ValueError:
                    version = None
            sample = Sample(at, resp.status_code, version, time.monotonic() - started)
        except requests.RequestException:
            sample = Sample(at, 0, None, time.monotonic() - started)
        with self._lock:
            self.samples.append(sample)
