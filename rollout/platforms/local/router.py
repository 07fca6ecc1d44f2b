"""The built-in router: one process per model that splits, mirrors and measures.

It is the local platform's data plane, doing what Istio or a Gateway does in
Kubernetes: weighted choice per request between a stable and a candidate backend,
fire-and-forget mirroring to the candidate with answer comparison, a preview path that
only reaches the candidate, version-pinned routes, and per-version counters both as
Prometheus metrics and as a windowed JSON summary (``/router/stats``) that the
``router`` metric provider reads. REST here (aiohttp); V2 gRPC on a second port in
``grpc_proxy`` with the same config, stats and metrics. What is forwarded and what is
refused is in ``proxying``.

    python -m rollout.platforms.local.router --model iris --port 9000 --state-file state.json \
        [--grpc-port 9001] [--backend-timeout-s 60] [--shadow-timeout-s 10] [--body-limit-bytes N]

Admin API (bound to 127.0.0.1 only):
    GET  /router/config            the RouterConfig as JSON
    PUT  /router/config            replace it (validated; 400 names the field)
    GET  /router/stats?window_s=N  per-version aggregates over the last N seconds
    GET  /router/health            liveness of the router itself
    GET  /metrics                  Prometheus exposition
Data plane:
    POST /v2/models/{m}/infer      live inference: split by weight, optionally mirrored
    ANY  /v2/models/{m}/versions/{v}/...   that version, whatever the split
    ANY  /v2, /v2/health/*, other /v2/...  stable
    ANY  /preview/v2/...           always the candidate (blue-green preview)

Config (GET/PUT body; PUT replaces it whole, missing keys take the defaults)::

    {"backends": {"v1": "http://127.0.0.1:1234", "v2": "..."},
     "grpc_backends": {"v1": "127.0.0.1:1235", ...}, "stable": "v1",
     "candidate": "v2" | null, "weight": 0-100, "mirror": 0-100,
     "float_rtol": 1e-06, "float_atol": 1e-12}

A 400 answer is ``{"error": "<message naming the field>", "field": "<key>"}``.

Stats: ``{"model", "window_s", "time", "config", "shadow_inflight", "versions": {v: {...}}}``
where each version has ``requests, errors, error_rate, connection_errors, timeouts,
codes {"200": n, ...}, latency_ms {mean, p50, p90, p99}, shadow_requests,
preview_requests, mirror {agree, disagree, error, skipped}, inflight, kinds``. The top
level is the version's inference (live, pinned, preview and shadow requests: what
analysis of a canary, a shadow or a preview reads); ``kinds`` has the same numbers for
each kind apart, including ``health``, ``metadata`` and ``other`` requests, which never
count in the top level. A shadow the router stopped waiting for (``shadow_timeout_s``)
shows only in ``kinds.shadow.timeouts`` and as mirror result ``skipped``. Errors are 5xx
answers (gRPC codes mapped to HTTP) and unreachable backends (502, counted in
``connection_errors``). Mirror results are counted under the candidate.

Failover: a live request whose version refuses the connection (its server died: the
request never reached it) is sent to the other version of the split, stable or
candidate, and answered from there; the refusal is still counted against the version
that refused. Nothing that may have reached a server is ever resent.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import socket
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics
from yarl import URL

from rollout.platforms.local import nginx_front
from rollout.platforms.local.nginx_front import NginxFront, Record
from rollout.platforms.local.proxying import (
    NOT_FORWARDED_REQUEST, NOT_FORWARDED_RESPONSE, PathRefused, add_forwarded, check_dots, check_path, end_to_end,
    from_front, route,
)
from rollout.platforms.local.routing import (
    PREVIEW_PREFIX, VERSION_HEADER, ConfigError, RouterConfig, StateFileError, load_config, parse_config,
    save_config,
)
from rollout.platforms.local.stats import (
    HISTORY_S, INFERENCE_KINDS, LIVE, PINNED, PREVIEW, SHADOW, Stats, outputs_agree,
)
from rollout.platforms.local.tensors import raw_values

log = logging.getLogger("rollout.router")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_BODY_LIMIT_BYTES = 64 * 1024 * 1024
BINARY_HEADER = "Inference-Header-Content-Length"  # the binary tensor extension's JSON length


class RouterMetrics:
    """Prometheus series, in a registry of their own so nothing global leaks in.

    ``rollout_router_requests_total`` and ``..._request_duration_seconds`` count
    inference only (kinds live, pinned, preview, shadow), so a query over them is an
    error rate or a latency of real traffic; probes and metadata calls are in
    ``rollout_router_other_requests_total``, shadows the router gave up on in
    ``rollout_router_shadow_timeouts_total``."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rollout_router_requests_total",
            "Inference requests answered, by version, HTTP code (gRPC codes mapped to HTTP) and kind "
            "(live|pinned|preview|shadow)",
            ["model", "version", "code", "kind"], registry=self.registry,
        )
        self.other = Counter(
            "rollout_router_other_requests_total", "Non-inference requests (health|metadata|other) by version and code",
            ["model", "version", "code", "kind"], registry=self.registry,
        )
        self.shadow_timeouts = Counter(
            "rollout_router_shadow_timeouts_total", "Mirrored requests the router stopped waiting for",
            ["model", "version"], registry=self.registry,
        )
        self.duration = Histogram(
            "rollout_router_request_duration_seconds", "Backend round-trip time of inference requests seen by the router",
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


@dataclass(frozen=True)
class Answer:
    """One backend answer as it goes back to the client (or to the shadow comparison)."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes
    own_error: bool = False  # the router answered for an unreachable or slow backend
    not_sent: bool = False  # the backend refused the connection: the request never reached it


def json_error(status: int, message: str, field: str | None = None) -> web.Response:
    """The router's own errors, in the protocol's JSON error shape ``{"error": ...}``."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def _own_answer(status: int, message: str, not_sent: bool = False) -> Answer:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    return Answer(status, None, headers, json.dumps({"error": message}).encode(), own_error=True, not_sent=not_sent)


class Router:
    """The routing state of one model: current config, stats, metrics, HTTP client."""

    def __init__(
        self,
        model: str,
        state_file: Path,
        *,
        now: Callable[[], float] = time.time,
        backend_timeout_s: float = 60.0,
        shadow_timeout_s: float = 10.0,
        max_shadow_inflight: int = 256,
    ) -> None:
        self.model = model
        self.state_file = state_file
        self.config, warning = load_config(state_file)
        if warning:
            log.warning("%s", warning)
        self.stats = Stats(now)
        self.metrics = RouterMetrics(model)
        self.metrics.set_weights(self.config)
        self.backend_timeout_s = backend_timeout_s
        self.shadow_timeout_s = shadow_timeout_s
        self.max_shadow_inflight = max_shadow_inflight
        self.session: aiohttp.ClientSession | None = None
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self._config_lock = asyncio.Lock()
        # The nginx front (--data-plane nginx): what it serves reaches stats and metrics
        # through drain_front; its in-flight counts are its own.
        self.front: NginxFront | None = None
        # False from the front's creation until nginx holds the split: health answers 503
        # meanwhile, so nobody starts using (or stopping) a router whose nginx is half up.
        self.front_ready = True
        self.front_inflight: dict[str, int] = {}
        self.front_dropped = 0
        self._drain_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        # keepalive below uvicorn's 5 s so we rarely reuse a connection the server closed.
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4.0)
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_mark_reused)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.backend_timeout_s, connect=5.0),
            auto_decompress=False,  # Content-Encoding passes through untouched
            # No negotiation of the router's own: no Accept, Accept-Encoding, User-Agent or
            # Content-Type that the client did not send.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            trace_configs=[trace],
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the client's, not shared across clients
        )
        # aiohttp retries idempotent requests on any disconnect by itself; the router
        # retries exactly when RFC 9112 9.3.1 makes it safe (see _send) and never twice.
        self.session._retry_connection = False

    async def on_cleanup(self, app: web.Application) -> None:
        for task in list(self.shadow_tasks):
            task.cancel()
        if self.shadow_tasks:
            await asyncio.gather(*self.shadow_tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # -- bookkeeping shared by REST and gRPC -----------------------------------------
    def begin(self, version: str) -> float:
        """Count a request in flight; returns its start time. Call synchronously right
        after choosing the version, so a retire that reads in-flight counts sees it."""
        self.stats.start(version)
        return time.perf_counter()

    def end(self, version: str, kind: str, code: int | None, started: float, *, timed_out: bool = False) -> None:
        elapsed = time.perf_counter() - started
        self.stats.finish(version, code, elapsed * 1000.0, kind, timed_out=timed_out)
        label = str(code or 502)
        if kind == SHADOW and timed_out:
            self.metrics.child(self.metrics.shadow_timeouts, version).inc()
        elif kind in INFERENCE_KINDS:
            self.metrics.child(self.metrics.requests, version, label, kind).inc()
            self.metrics.child(self.metrics.duration, version).observe(elapsed)
        else:
            self.metrics.child(self.metrics.other, version, label, kind).inc()

    def record_front(self, rec: Record) -> None:
        """One request the nginx front served, counted as ``end`` counts the router's own."""
        code = rec.code
        if rec.grpc_status is not None:
            from rollout.platforms.local.grpc_proxy import http_code_of_status

            code = http_code_of_status(rec.grpc_status)
        self.stats.finish(rec.version, code, rec.latency_ms, rec.kind, timed_out=rec.timed_out,
                          counted_inflight=False)
        label = str(code or 502)
        if rec.kind in INFERENCE_KINDS:
            self.metrics.child(self.metrics.requests, rec.version, label, rec.kind).inc()
            self.metrics.child(self.metrics.duration, rec.version).observe(rec.latency_ms / 1000.0)
        else:
            self.metrics.child(self.metrics.other, rec.version, label, rec.kind).inc()

    async def push_front(self) -> None:
        """Give the nginx front the current split (at start, on every change, after nginx
        was restarted)."""
        if self.front is None:
            return
        assert self.session is not None
        body = json.dumps(nginx_front.fast_config(self.config))
        async with self.session.put(self.front.admin_url + "/config", data=body, headers=self.front.admin_headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"nginx front refused the config: {resp.status} {await resp.text()}")

    async def drain_front(self) -> bool:
        """Take the requests nginx served since the last drain into stats and metrics,
        and its in-flight counts; a front that does not answer leaves both as they were.
        False when nginx answered but holds no split (it was given none since it started)."""
        if self.front is None or self.session is None:
            return True
        async with self._drain_lock:
            try:
                async with self.session.get(self.front.admin_url + "/drain", headers=self.front.admin_headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("nginx front did not answer its drain: %s", exc)
                return True
            if status != 200:
                log.warning("nginx front answered its drain with %d: %s", status, text[:200])
                return True
            meta, records = nginx_front.parse_drain(text)
            for rec in records:
                self.record_front(rec)
            self.front_inflight = {v: int(n) for v, n in meta["inflight"].items()}
            dropped = int(meta.get("dropped") or 0)
            if dropped > self.front_dropped:
                log.warning("nginx front dropped %d request records (its queue was full)", dropped - self.front_dropped)
                self.front_dropped = dropped
            return meta.get("gen") is not None

    def mirror_result(self, candidate: str, result: str) -> None:
        self.stats.mirror_result(candidate, result)
        self.metrics.child(self.metrics.mirror, candidate, result).inc()

    def choose(self, cfg: RouterConfig, kind: str, pinned: str | None, preview: bool) -> str:
        """The version that serves a request, or PathRefused with the reason.
        Only live inference is split; a path that pins a version the router serves goes
        to it; everything else goes to stable (under /preview: to the candidate). A
        pinned version the router does not serve also goes there, so the client gets
        the model server's own answer (404, or 422 for a bad body first), exactly as
        it would directly."""
        if preview and cfg.candidate is None:
            raise PathRefused(503, f"model {self.model!r} has no candidate: preview needs one")
        if preview:
            assert cfg.candidate is not None
            return cfg.candidate
        if pinned is not None and pinned in cfg.backends:
            return pinned
        version = cfg.choose() if kind == LIVE else cfg.stable
        if version is None:
            raise PathRefused(503, f"model {self.model!r} has no stable version configured")
        return version

    # -- data plane --------------------------------------------------------------
    async def _send(
        self, version: str, url: str, method: str, headers: CIMultiDict[str], body: bytes | None, kind: str,
    ) -> Answer:
        """Send one request to one backend and record it. Must be awaited directly
        after the version was chosen (see ``begin``)."""
        assert self.session is not None
        started = self.begin(version)
        code: int | None = None
        timed_out = False
        timeout_s = self.shadow_timeout_s if kind == SHADOW else self.backend_timeout_s
        try:
            for attempt in (1, 2):
                trace_ctx = {"reused": False}
                answered = False
                try:
                    async with self.session.request(
                        method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=timeout_s, connect=5.0), trace_request_ctx=trace_ctx,
                    ) as resp:
                        answered = True
                        payload = await resp.read()
                        code = resp.status
                        out = end_to_end(resp.raw_headers, NOT_FORWARDED_RESPONSE)
                        if method == "HEAD" and resp.headers.get("Content-Length") is not None:
                            # RFC 9110 9.3.2: a HEAD answer's length is the GET body's; keep it
                            # (aiohttp sends no body for HEAD whatever the header says).
                            out["Content-Length"] = resp.headers["Content-Length"]
                        return Answer(code, resp.reason, out, payload)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    # RFC 9112 9.3.1: a connection reused from the pool that the backend
                    # closed before sending any byte of an answer is the keep-alive race,
                    # not the request's fault; resend once on a fresh connection. Nothing
                    # else is retried (a fresh connection that fails, an answer cut short).
                    fresh_failure = isinstance(exc, aiohttp.ClientConnectorError) or not trace_ctx["reused"]
                    if attempt == 2 or answered or fresh_failure:
                        raise
                    log.info("backend %s closed a reused connection before answering; resending once", version)
            raise AssertionError("unreachable")
        except asyncio.TimeoutError:
            code, timed_out = 504, True
            return _own_answer(504, f"backend {version} did not answer within {timeout_s:g}s")
        except aiohttp.ClientError as exc:
            return _own_answer(502, f"backend {version} unreachable: {type(exc).__name__}: {exc}",
                               not_sent=isinstance(exc, aiohttp.ClientConnectorError))
        finally:
            self.end(version, kind, code, started, timed_out=timed_out)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        preview = raw.startswith(PREVIEW_PREFIX + "/v2")
        target_raw = raw[len(PREVIEW_PREFIX):] if preview else raw
        cfg = self.config  # one snapshot for the whole request
        try:
            check_path(target_raw)
            where = route(request.method, target_raw)
            kind = PREVIEW if preview and where.kind in (LIVE, PINNED) else where.kind
            version = self.choose(cfg, where.kind, where.pinned, preview)
        except PathRefused as exc:
            return json_error(exc.status, str(exc))
        try:
            body = await request.read() if request.body_exists else None
        except web.HTTPRequestEntityTooLarge as exc:
            return json_error(413, f"request body over the router's limit of {request.client_max_size} bytes "
                              f"(body_limit_bytes): {exc.text}")
        except (ConnectionError, aiohttp.ClientPayloadError, asyncio.CancelledError) as exc:
            log.info("client went away while sending its body: %s", type(exc).__name__)
            raise
        raw_headers, peer = (request.raw_headers, None) if self.front is None else \
            from_front(request.raw_headers, self.front.token)
        headers = end_to_end(raw_headers, NOT_FORWARDED_REQUEST)
        add_forwarded(headers, peer or request.remote, request.host, request.scheme)
        mirror = (kind == LIVE and version == cfg.stable and cfg.should_mirror())
        answer = await self._send(version, cfg.backends[version] + where.target, request.method, headers, body, kind)
        other = cfg.candidate if version == cfg.stable else cfg.stable
        if answer.not_sent and kind == LIVE and other is not None and other in cfg.backends:
            # Failover: the chosen version refused the connection (its process died), so
            # the request never reached it and sending it to the other version is safe.
            # The refusal still counts against the dead version (stats, analysis); the
            # engine restarts a dead stable or rolls a dead candidate back meanwhile.
            log.info("backend %s refused the connection; request sent to %s instead", version, other)
            version, mirror = other, False
            answer = await self._send(version, cfg.backends[version] + where.target, request.method, headers, body, kind)
        if mirror:
            self._spawn_shadow(cfg, where.target, headers, body, answer)
        out = answer.headers.copy()
        # Which version answered, even when it answered with an error: callers and
        # tests can attribute every response without parsing bodies.
        out[VERSION_HEADER] = version
        return web.Response(status=answer.status, reason=answer.reason, body=answer.body, headers=out)

    def _spawn_shadow(
        self, cfg: RouterConfig, target: str, headers: CIMultiDict[str], body: bytes | None, stable: Answer,
    ) -> None:
        current = self.config
        candidate = cfg.candidate
        assert candidate is not None
        if current.candidate != candidate or candidate not in current.backends:
            return  # the candidate left while stable answered: nothing to shadow any more
        if len(self.shadow_tasks) >= self.max_shadow_inflight:
            self.mirror_result(candidate, "skipped")
            return
        # The task starts on the next loop tick, long before a retire that changed the
        # config can read the in-flight counts back, so drains see every shadow.
        coro = self._shadow(candidate, current.backends[candidate] + target, headers, body, stable, current)
        task = asyncio.get_running_loop().create_task(coro)
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(
        self, candidate: str, url: str, headers: CIMultiDict[str], body: bytes | None, stable: Answer,
        cfg: RouterConfig,
    ) -> None:
        answer = await self._send(candidate, url, "POST", headers, body, SHADOW)
        if answer.status == 504 and answer.own_error:
            result = "skipped"  # the shadow's timeout: neither agreement nor the candidate's error
        elif answer.status >= 400:
            result = "error"
        elif stable.status >= 400:
            result = "skipped"  # nothing to compare the shadow's answer with
        else:
            result = compare_answers(stable, answer, cfg.float_rtol, cfg.float_atol)
        self.mirror_result(candidate, result)

    # -- admin -------------------------------------------------------------------
    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_json())

    async def put_config(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return json_error(400, f"config is not valid JSON: {exc}", field="(body)")
        try:
            new = parse_config(body)
        except ConfigError as exc:
            return json_error(400, str(exc), field=exc.field)
        async with self._config_lock:
            try:
                await asyncio.to_thread(save_config, new, self.state_file)
            except OSError as exc:
                return json_error(500, f"cannot persist config to {self.state_file}: {exc}")
            old, self.config = self.config, new  # atomic swap: requests keep their snapshot
            self.metrics.set_weights(new)
            try:
                await self.push_front()
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as exc:
                return json_error(500, f"config saved, but the nginx front did not take it: {exc}")
        log.info("config changed: %s -> %s", _describe(old), _describe(new))
        return web.json_response(new.to_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        raw = request.query.get("window_s", "60")
        try:
            window_s = int(raw)
            if not 1 <= window_s <= HISTORY_S:
                raise ValueError
        except ValueError:
            return json_error(400, f"window_s must be an integer 1-{HISTORY_S}, got {raw!r}", field="window_s")
        await self.drain_front()
        for version, n in self.front_inflight.items():
            if n > 0:
                self.stats.versions[version]  # a version whose only requests are still in nginx
        versions = self.stats.summary(window_s)
        for version, n in self.front_inflight.items():
            if version in versions:
                versions[version]["inflight"] += n
        return web.json_response({
            "model": self.model,
            "window_s": window_s,
            "time": self.stats.now(),
            "config": self.config.to_json(),
            "shadow_inflight": len(self.shadow_tasks),
            "versions": versions,
            "data_plane": "nginx" if self.front is not None else "python",
        })

    async def health(self, request: web.Request) -> web.Response:
        if not self.front_ready:
            return web.json_response({"ok": False, "model": self.model, "error": "the nginx front is starting"},
                                     status=503)
        return web.json_response({"ok": True, "model": self.model})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        await self.drain_front()
        # In flight: the router's own requests and nginx's, read when scraped.
        for version in set(self.stats.versions) | set(self.front_inflight):
            own = self.stats.versions[version].inflight
            self.metrics.child(self.metrics.inflight, version).set(own + self.front_inflight.get(version, 0))
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _describe(cfg: RouterConfig) -> str:
    return f"stable={cfg.stable} candidate={cfg.candidate} weight={cfg.weight} mirror={cfg.mirror}"


async def _mark_reused(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["reused"] = True


def _decoded(answer: Answer) -> bytes:
    """The answer's body with its Content-Encoding undone, for comparison only (the
    client always gets the bytes as the backend sent them)."""
    encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(answer.body)
    if encoding == "deflate":
        return zlib.decompress(answer.body)
    if encoding in ("identity", ""):
        return answer.body
    raise ValueError(f"cannot compare answers with Content-Encoding {encoding!r}")


def _outputs(answer: Answer) -> Any:
    """The JSON part of a V2 answer with each binary output's bytes (the binary tensor
    extension) decoded into its ``data``, so binary and JSON answers are compared alike,
    floats within the tolerance."""
    body = _decoded(answer)
    length = answer.headers.get(BINARY_HEADER)
    if length is None:
        return json.loads(body)
    n = int(length)
    doc, binary = json.loads(body[:n]), body[n:]
    offset = 0
    for output in doc.get("outputs") or []:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ValueError(f"output {output.get('name')!r}: binary_data_size {size!r} does not fit the body")
            output["data"] = raw_values(str(output.get("datatype")), binary[offset:offset + size])
            offset += size
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} bytes of binary data belong to no output")
    return doc


def compare_answers(stable: Answer, shadow: Answer, rtol: float, atol: float) -> str:
    """``agree``/``disagree`` on the outputs of two V2 answers, JSON or binary, floats
    within ``rtol``/``atol`` (the same comparison as gRPC's); ``error`` if the shadow's
    cannot be read."""
    try:
        agree = outputs_agree(_outputs(stable), _outputs(shadow), rtol, atol)
    except (ValueError, AttributeError, TypeError, OSError, zlib.error):
        return "error"
    return "agree" if agree else "disagree"


@web.middleware
async def refuse_dot_segments(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """aiohttp's dispatcher matches the normalised path, so ``/v2/../router/config``
    would reach an admin route: any path with a dot segment is refused before that."""
    if "." in request.raw_path:
        try:
            check_dots(request.raw_path)
        except PathRefused as exc:
            return json_error(exc.status, str(exc))
    return await handler(request)


def build_app(router: Router, body_limit_bytes: int = DEFAULT_BODY_LIMIT_BYTES) -> web.Application:
    app = web.Application(client_max_size=body_limit_bytes, middlewares=[refuse_dot_segments])
    app.on_startup.append(router.on_startup)
    app.on_cleanup.append(router.on_cleanup)
    app.router.add_get("/router/config", router.get_config)
    app.router.add_put("/router/config", router.put_config)
    app.router.add_get("/router/stats", router.get_stats)
    app.router.add_get("/router/health", router.health)
    app.router.add_get("/metrics", router.metrics_endpoint)
    # Everything else is the data plane; the handler checks the raw path itself (a
    # dispatcher would match on the decoded one).
    app.router.add_route("*", "/{tail:.*}", router.proxy)
    return app


async def serve(router: Router, host: str, port: int, grpc_port: int | None, body_limit_bytes: int,
                front_prefix: Path | None = None) -> None:
    """Run the REST app and, if asked, the gRPC proxy on one event loop until cancelled.
    With ``front_prefix`` (``--data-plane nginx``), nginx takes the public ports and the
    two Python servers listen on private ones behind it."""
    # auto_decompress=False: a gzip request body passes through as the client encoded it.
    runner = web.AppRunner(build_app(router, body_limit_bytes), access_log=None, handle_signals=True,
                           auto_decompress=False)
    await runner.setup()
    front = None
    rest_port, rest_grpc_port = port, grpc_port
    if front_prefix is not None:
        front = NginxFront.left_behind(front_prefix, port=port, grpc_port=grpc_port,
                                       backend_timeout_s=router.backend_timeout_s, body_limit_bytes=body_limit_bytes)
        if front is not None and not all(_port_free(p) for p in (front.python_port, front.python_grpc_port) if p):
            log.warning("the nginx front left running (pid %s) sends to ports now taken; starting a new one",
                        front.pid)
            front = None  # start() stops the one left behind
        if front is None:
            front = NginxFront(front_prefix, port=port, grpc_port=grpc_port, admin_port=_free_port(),
                               python_port=_free_port(), python_grpc_port=_free_port() if grpc_port is not None else None,
                               backend_timeout_s=router.backend_timeout_s, body_limit_bytes=body_limit_bytes)
        rest_port, rest_grpc_port = front.python_port, front.python_grpc_port
        router.front, router.front_ready = front, False
    site = web.TCPSite(runner, host, rest_port)
    grpc_server = None
    keeper: asyncio.Task[None] | None = None
    try:
        if rest_grpc_port is not None:  # before REST: /router/health answering means both are up
            from rollout.platforms.local.grpc_proxy import start_grpc

            grpc_server = await start_grpc(router, host, rest_grpc_port, body_limit_bytes)
        await site.start()
        if front is not None:
            if front.adopted_pid is not None:
                await adopt_front(router, front)
            else:
                await start_front(router, front)
            router.front_ready = True
            keeper = asyncio.get_running_loop().create_task(keep_front(router, front))
        await asyncio.Event().wait()
    finally:
        if keeper is not None:
            keeper.cancel()
        if front is not None:
            front.stop()
        if grpc_server is not None:
            await grpc_server.stop(1.0)
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _front_healthy(router: Router, front: NginxFront, timeout_s: float) -> None:
    """Wait until nginx's admin server answers; FrontError if nginx exits or stays silent."""
    assert router.session is not None
    deadline = time.monotonic() + timeout_s
    while True:
        if not front.alive():
            raise FrontError(f"nginx front exited at start: {front.error_tail()}")
        try:
            async with router.session.get(front.admin_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise FrontError(f"nginx front not ready within {timeout_s:g}s: {front.error_tail()}")
        await asyncio.sleep(0.05)


async def start_front(router: Router, front: NginxFront, ready_timeout_s: float = 15.0) -> None:
    """Start nginx and give it the split; nginx serves the public ports from here on."""
    front.start()
    router.front_dropped = 0  # a new nginx counts its drops from zero
    await _front_healthy(router, front, ready_timeout_s)
    await router.push_front()
    log.info("nginx front on port %d%s (pid %s)", front.port,
             f" and gRPC {front.grpc_port}" if front.grpc_port else "", front.pid)


async def adopt_front(router: Router, front: NginxFront, ready_timeout_s: float = 5.0) -> None:
    """Take over the nginx a previous router left serving this router's ports: it kept
    serving the split it had, so clients saw no gap. It gets this router's split, and
    what it served meanwhile is counted. One that does not answer is replaced."""
    try:
        await _front_healthy(router, front, ready_timeout_s)
        await router.push_front()
    except (FrontError, RuntimeError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("the nginx front left running (pid %s) did not answer (%s); starting a new one", front.pid, exc)
        await start_front(router, front)
        return
    await router.drain_front()
    log.info("nginx front on port %d%s (pid %s) adopted: it served meanwhile", front.port,
             f" and gRPC {front.grpc_port}" if front.grpc_port else "", front.pid)


async def keep_front(router: Router, front: NginxFront, every_s: float = 0.5) -> None:
    """Drain nginx's records twice a second; start nginx again if it died, and give it
    the split again if it has none. Nothing that goes wrong in one round ends the loop:
    without it nobody would restart nginx or count what it serves."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if not front.alive():
                log.error("nginx front died (%s); starting it again", front.error_tail(2))
                await start_front(router, front)
                continue
            if not await router.drain_front():
                log.warning("nginx front has no split (its config push failed); giving it again")
                await router.push_front()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the keeper outlives any one failure, and says which
            log.exception("nginx front: this round failed; trying again in %gs", every_s)


class FrontError(RuntimeError):
    """The nginx front could not start."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rollout's built-in router for one model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--grpc-port", type=int, default=None, help="also proxy V2 gRPC on this port")
    parser.add_argument("--state-file", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--backend-timeout-s", type=float, default=60.0)
    parser.add_argument("--shadow-timeout-s", type=float, default=10.0)
    parser.add_argument("--body-limit-bytes", type=int, default=DEFAULT_BODY_LIMIT_BYTES)
    parser.add_argument("--data-plane", choices=("python", "nginx"), default="python",
                        help="who relays inference: this process, or nginx in front of it (nginx_front)")
    args = parser.parse_args(argv)
    front_prefix = None
    if args.data_plane == "nginx":
        why = nginx_front.missing()
        if why is not None:
            print(f"router for {args.model} not started: --data-plane nginx: {why}", file=sys.stderr)
            sys.exit(3)
        front_prefix = nginx_front.prefix_for(args.state_file)
    elif nginx_front.stop_left_behind(nginx_front.prefix_for(args.state_file)):
        print(f"router for {args.model}: stopped the nginx front a previous router left running "
              "(this one relays on the python plane)", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # a client hanging up is not a traceback
    try:
        import uvloop  # optional: faster proxying when installed (MLServer brings it)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    disable_created_metrics()  # *_created series only double the scrape size
    try:
        router = Router(args.model, args.state_file, backend_timeout_s=args.backend_timeout_s,
                        shadow_timeout_s=args.shadow_timeout_s)
    except StateFileError as exc:
        print(f"router for {args.model} not started: {exc}", file=sys.stderr)
        sys.exit(3)
    log.info("router for %s on %s:%d%s, %s", args.model, args.host, args.port,
             f" (gRPC {args.grpc_port})" if args.grpc_port else "", _describe(router.config))
    try:
        asyncio.run(serve(router, args.host, args.port, args.grpc_port, args.body_limit_bytes, front_prefix))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    except FrontError as exc:
        print(f"router for {args.model} not started: {exc}", file=sys.stderr)
        sys.exit(4)
    except OSError as exc:  # a port in use: one line naming it, not a traceback
        print(f"router for {args.model} not started: {exc}", file=sys.stderr)
        sys.exit(4)


if __name__ == "__main__":
    main()
