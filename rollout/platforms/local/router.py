"""The built-in router: one aiohttp process per model that splits, mirrors and measures.

It is the local platform's data plane, doing what Istio or a Gateway does in
Kubernetes: weighted choice per request between a stable and a candidate backend,
fire-and-forget mirroring to the candidate with answer comparison, a preview path that
only reaches the candidate, and per-version counters both as Prometheus metrics and as
a windowed JSON summary (``/router/stats``) that the ``router`` metric provider reads.

    python -m rollout.platforms.local.router --model iris --port 9000 --state-file state.json

Admin API (bound to 127.0.0.1 only):
    GET  /router/config            the RouterConfig as JSON
    PUT  /router/config            replace it (validated; 400 names the field)
    GET  /router/stats?window_s=N  per-version aggregates over the last N seconds
    GET  /router/health            liveness of the router itself
    GET  /metrics                  Prometheus exposition
Data plane:
    ANY  /v2/...                   live traffic, split by weight, optionally mirrored
    ANY  /preview/v2/...           always the candidate (blue-green preview)

Config (GET/PUT body; PUT replaces it whole, missing keys take the defaults)::

    {"backends": {"v1": "http://127.0.0.1:1234", "v2": "..."}, "stable": "v1",
     "candidate": "v2" | null, "weight": 0-100, "mirror": 0-100,
     "float_rtol": 1e-06, "float_atol": 1e-12}

A 400 answer is ``{"error": "<message naming the field>", "field": "<key>"}``.

Stats: ``{"model", "window_s", "time", "config", "shadow_inflight", "versions": {v: {...}}}``
where each version has ``requests, errors, error_rate, connection_errors,
shadow_requests, preview_requests, codes {"200": n, ...}, latency_ms {mean, p50, p90,
p99}, mirror {agree, disagree, error, skipped}, inflight``. Live, shadow and preview
requests all count under the version that served them (a candidate's numbers are what
analysis of a canary, a shadow or a preview reads); ``shadow_requests`` and
``preview_requests`` say how many of them were which. Errors are 5xx answers and
unreachable backends (answered 502, counted in ``connection_errors``). Mirror results
are counted under the candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

from rollout.platforms.local.routing import (
    PREVIEW_PREFIX,
    VERSION_HEADER, ConfigError, RouterConfig, load_config, parse_config, save_config,
)
from rollout.platforms.local.stats import HISTORY_S, Stats, outputs_agree

log = logging.getLogger("rollout.router")

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouterMetrics:
    """Prometheus series, in a registry of their own so nothing global leaks in."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rollout_router_requests_total", "Requests answered, by version, HTTP code and kind (live|shadow|preview)",
            ["model", "version", "code", "kind"], registry=self.registry,
        )
        self.duration = Histogram(
            "rollout_router_request_duration_seconds", "Backend round-trip time seen by the router",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.mirror = Counter(
            "rollout_router_mirror_total", "Shadow answers compared with stable's",
            ["model", "version", "result"], registry=self.registry,
        )
        self.weight = Gauge(
            "rollout_router_traffic_weight", "Percent of live traffic routed to the version",
            ["model", "version"], registry=self.registry,
        )
        self.inflight = Gauge(
            "rollout_router_inflight", "Requests in flight to the version",
            ["model", "version"], registry=self.registry,
        )
        self._weighted: set[str] = set()
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(model, *labels)``, cached: the lookup takes a lock and builds
        a key per call, which is measurable at thousands of requests per second."""
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(self.model, *labels)
        return found

    def set_weights(self, config: RouterConfig) -> None:
        weights = config.weights()
        for version in self._weighted - set(weights):
            self.weight.labels(self.model, version).set(0)
        for version, w in weights.items():
            self.weight.labels(self.model, version).set(w)
        self._weighted |= set(weights)


class Router:
    """The routing state of one model: current config, stats, metrics, HTTP client."""

    def __init__(
        self,
        model: str,
        state_file: Path,
        *,
        now: Callable[[], float] = time.time,
        backend_timeout_s: float = 60.0,
        max_shadow_inflight: int = 256,
    ) -> None:
        self.model = model
        self.state_file = state_file
        self.config: RouterConfig = load_config(state_file)
        self.stats = Stats(now)
        self.metrics = RouterMetrics(model)
        self.metrics.set_weights(self.config)
        self.backend_timeout_s = backend_timeout_s
        self.max_shadow_inflight = max_shadow_inflight
        self.session: aiohttp.ClientSession | None = None
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self._config_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        # keepalive below uvicorn's 5 s so we never reuse a connection the server closed.
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4.0)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.backend_timeout_s, connect=5.0),
            auto_decompress=False,
        )

    async def on_cleanup(self, app: web.Application) -> None:
        for task in list(self.shadow_tasks):
            task.cancel()
        if self.shadow_tasks:
            await asyncio.gather(*self.shadow_tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # -- data plane --------------------------------------------------------------
    async def _forward(
        self, version: str, url: str, method: str, headers: dict[str, str], body: bytes, kind: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request to one backend and record it. Must be awaited directly
        after the version was chosen: everything up to the first ``await`` runs
        synchronously, so in-flight counts are exact when a retire reads them."""
        assert self.session is not None
        self.stats.start(version)
        gauge = self.metrics.child(self.metrics.inflight, version)
        gauge.inc()
        started = time.perf_counter()
        code: int | None = None
        try:
            async with self.session.request(method, url, headers=headers, data=body) as resp:
                payload = await resp.read()
                code = resp.status
                out_headers = {"Content-Type": resp.headers.get("Content-Type", "application/json")}
                return code, out_headers, payload
        except asyncio.TimeoutError:
            code = 504
            msg = f"backend {version} did not answer within {self.backend_timeout_s:g}s"
            return 504, {"Content-Type": "application/json"}, json.dumps({"error": msg}).encode()
        except aiohttp.ClientError as exc:
            msg = f"backend {version} unreachable: {type(exc).__name__}: {exc}"
            return 502, {"Content-Type": "application/json"}, json.dumps({"error": msg}).encode()
        finally:
            elapsed = time.perf_counter() - started
            gauge.dec()
            self.stats.finish(version, code, elapsed * 1000.0, shadow=kind == "shadow", preview=kind == "preview")
            self.metrics.child(self.metrics.requests, version, str(code or 502), kind).inc()
            self.metrics.child(self.metrics.duration, version).observe(elapsed)

    async def proxy(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        preview = request.path.startswith(PREVIEW_PREFIX + "/")
        path = request.rel_url.path_qs[len(PREVIEW_PREFIX):] if preview else request.rel_url.path_qs
        cfg = self.config  # one snapshot for the whole request
        if preview:
            version = cfg.candidate
            if version is None:
                return _json_error(503, f"model {self.model!r} has no candidate: preview needs one")
        else:
            version = cfg.choose()
            if version is None:
                return _json_error(503, f"model {self.model!r} has no stable version configured")
        mirror = (not preview and version == cfg.stable and request.method == "POST"
                  and path.rstrip("/").endswith("/infer") and cfg.should_mirror())
        kind = "preview" if preview else "live"
        status, out_headers, payload = await self._forward(
            version, cfg.backends[version] + path, request.method, headers, body, kind
        )
        if mirror:
            self._spawn_shadow(cfg, path, headers, body, status, payload)
        # Which version answered, even when it answered with an error: callers and
        # tests can attribute every response without parsing bodies.
        out_headers = {**out_headers, VERSION_HEADER: version}
        return web.Response(status=status, body=payload, headers=out_headers)

    def _spawn_shadow(
        self, cfg: RouterConfig, path: str, headers: dict[str, str], body: bytes, status: int, payload: bytes
    ) -> None:
        current = self.config
        candidate = cfg.candidate
        assert candidate is not None
        if current.candidate != candidate or candidate not in current.backends:
            return  # the candidate left while stable answered: nothing to shadow any more
        if len(self.shadow_tasks) >= self.max_shadow_inflight:
            self.stats.mirror_result(candidate, "skipped")
            self.metrics.child(self.metrics.mirror, candidate, "skipped").inc()
            return
        # The task starts on the next loop tick, long before a retire that changed the
        # config can read the in-flight counts back, so drains see every shadow.
        coro = self._shadow(candidate, current.backends[candidate] + path, headers, body, status, payload, current)
        task = asyncio.get_running_loop().create_task(coro)
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(
        self, candidate: str, url: str, headers: dict[str, str], body: bytes,
        stable_status: int, stable_payload: bytes, cfg: RouterConfig,
    ) -> None:
        status, _, payload = await self._forward(candidate, url, "POST", headers, body, "shadow")
        if status >= 400:
            result = "error"
        elif stable_status >= 400:
            result = "skipped"  # nothing to compare the shadow's answer with
        else:
            try:
                agree = outputs_agree(json.loads(stable_payload), json.loads(payload), cfg.float_rtol, cfg.float_atol)
                result = "agree" if agree else "disagree"
            except (ValueError, AttributeError, TypeError):
                result = "error"
        self.stats.mirror_result(candidate, result)
        self.metrics.child(self.metrics.mirror, candidate, result).inc()

    # -- admin -------------------------------------------------------------------
    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_json())

    async def put_config(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return _json_error(400, f"config is not valid JSON: {exc}", field="(body)")
        try:
            new = parse_config(body)
        except ConfigError as exc:
            return _json_error(400, str(exc), field=exc.field)
        async with self._config_lock:
            try:
                await asyncio.to_thread(save_config, new, self.state_file)
            except OSError as exc:
                return _json_error(500, f"cannot persist config to {self.state_file}: {exc}")
            old, self.config = self.config, new  # atomic swap: requests keep their snapshot
            self.metrics.set_weights(new)
        log.info("config changed: %s -> %s", _describe(old), _describe(new))
        return web.json_response(new.to_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        raw = request.query.get("window_s", "60")
        try:
            window_s = int(raw)
            if not 1 <= window_s <= HISTORY_S:
                raise ValueError
        except ValueError:
            return _json_error(400, f"window_s must be an integer 1-{HISTORY_S}, got {raw!r}", field="window_s")
        return web.json_response({
            "model": self.model,
            "window_s": window_s,
            "time": self.stats.now(),
            "config": self.config.to_json(),
            "shadow_inflight": len(self.shadow_tasks),
            "versions": self.stats.summary(window_s),
        })

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "model": self.model})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _describe(cfg: RouterConfig) -> str:
    return f"stable={cfg.stable} candidate={cfg.candidate} weight={cfg.weight} mirror={cfg.mirror}"


def _json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def build_app(router: Router) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(router.on_startup)
    app.on_cleanup.append(router.on_cleanup)
    app.router.add_get("/router/config", router.get_config)
    app.router.add_put("/router/config", router.put_config)
    app.router.add_get("/router/stats", router.get_stats)
    app.router.add_get("/router/health", router.health)
    app.router.add_get("/metrics", router.metrics_endpoint)
    app.router.add_route("*", "/v2/{tail:.*}", router.proxy)
    app.router.add_route("*", PREVIEW_PREFIX + "/v2/{tail:.*}", router.proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rollout's built-in router for one model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--state-file", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backend-timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop  # optional: faster proxying when installed (MLServer brings it)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    disable_created_metrics()  # *_created series only double the scrape size
    router = Router(args.model, args.state_file, backend_timeout_s=args.backend_timeout_s)
    log.info("router for %s on %s:%d, %s", args.model, args.host, args.port, _describe(router.config))
    web.run_app(build_app(router), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
