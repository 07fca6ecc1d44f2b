"""`rollout controller`: reconciles every model of a state home from one timer queue, so
detached rollouts, retirements and hooks progress with no CLI process alive.

- One timer queue (a heap of next-wake times): hundreds of rollouts share one process.
- One controller leads per state home: an OS lock on ``<home>/locks/controller.leader``
  (released by the kernel when the process dies, so a standby takes over at once).
- Per-model locks are kept: the controller holds a model's lock only while it reconciles
  it, so a CLI command and the controller never act on one model at the same time, and
  a model held by a `rollout start` process is skipped and retried.
- ``/metrics`` (Prometheus text) and ``/healthz`` on 127.0.0.1.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rollout.clock import Clock, SystemClock
from rollout.engine.reconcile import Reconciler, Result
from rollout.engine.services import Services
from rollout.errors import Locked, RolloutError
from rollout.state import CONTROLLER_COMMAND, ModelState, StateStore, holder_identity

log = logging.getLogger("rollout.controller")

SCAN_S = 2.0  # how often the state home is scanned for new rollouts and commands' changes
RESYNC_S = 300.0  # every model is reconciled at least this often, changed or not (a missed change heals)
LOCKED_RETRY_S = 1.0  # a model another process holds is tried again after this long
ERROR_RETRY_S = 10.0


# Leader election for a state home and the background daemon live with the local
# platform (it starts the daemon itself); re-exported here for the CLI and the tests.
from rollout.platforms.local.daemon import leader, leadership, start_daemon, stop_daemon  # noqa: E402

__all__ = ["Controller", "leader", "leadership", "metrics_registry", "run_local_controller", "serve_http",
           "start_daemon", "stop_daemon"]


# ------------------------------------------------------------------ the timer queue


@dataclass(frozen=True)
class Summary:
    """What /metrics says about one model: kept instead of its whole state, so a
    thousand models cost a thousand small records, not a thousand documents."""

    rollout_id: str | None = None
    phase: str | None = None
    candidate: str | None = None
    weight: int = 0
    last_values: tuple[tuple[str, str, float], ...] = ()  # (metric, version, value)
    steps_recorded: int = 0

    @classmethod
    def of(cls, ms: ModelState) -> "Summary":
        r = ms.rollout
        if r is None:
            return cls()
        latest: dict[tuple[str, str], float] = {}
        for m in r.measurements:
            if m.value is not None:
                latest[(m.metric, m.version)] = m.value
        return cls(r.id, r.phase.value, r.candidate.version, r.traffic.weight,
                   tuple((metric, version, v) for (metric, version), v in latest.items()), len(r.steps))


@dataclass
class ControllerStats:
    reconciles: int = 0
    errors: int = 0
    skipped_locked: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # step outcome -> count


class Controller:
    """Reconciles the models of one store. ``services_for(model)`` builds a model's
    services (its platform is bound to the model); they are kept per model."""

    def __init__(self, store: StateStore, services_for: Callable[[str, ModelState], Services], clock: Clock,
                 holder: str | None = None, scan_s: float = SCAN_S,
                 on_result: Callable[[str, Result], None] | None = None) -> None:
        self.store = store
        self.services_for = services_for
        self.clock = clock
        self.holder = holder or holder_identity(CONTROLLER_COMMAND)
        self.scan_s = scan_s
        self.on_result = on_result
        self.queue: list[tuple[float, int, str]] = []
        self.scheduled: dict[str, float] = {}
        self.reconcilers: dict[str, tuple[str | None, Reconciler]] = {}  # model -> (rollout id, reconciler)
        self.summaries: dict[str, Summary] = {}
        self.stats = ControllerStats()
        self._seq = 0
        self._next_scan = 0.0
        self._next_resync = 0.0
        self._seen: dict[str, str] = {}  # model -> its state's change token at the last scan

    def schedule(self, model: str, at: float) -> None:
        """Wake ``model`` at ``at`` (an earlier wake wins; a stale heap entry is skipped)."""
        if model in self.scheduled and self.scheduled[model] <= at:
            return
        self.scheduled[model] = at
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, model))

    def scan(self) -> None:
        """Schedule now every model whose state changed since the last scan, waiting on a
        timer or not: a new (detached) rollout, or one a command promoted, aborted or
        ended. An unchanged idle model is not touched (with a hundred ended rollouts, a
        rescan that reconciled each would cost a lock and a read per model every scan);
        every model is still reconciled once per ``RESYNC_S``. Stores that cannot give change
        tokens (no ``revisions()``) get every idle model scheduled, as before."""
        now = self.clock.now()
        revisions = getattr(self.store, "revisions", None)
        tokens: dict[str, str | None] = (dict(revisions()) if callable(revisions)
                                         else dict.fromkeys(self.store.models()))
        resync = now >= self._next_resync
        for model, token in tokens.items():
            changed = token is not None and self._seen.get(model) != token
            # A model waiting on a timer is woken now when its state changed: a command
            # started, promoted or aborted a rollout there, and its timer may be minutes off
            # (a retirement's). Without change tokens, a timer cannot be told apart.
            if model in self.scheduled and not changed:
                continue
            if token is not None and not resync and not changed:
                continue
            if token is not None:
                self._seen[model] = token
            self.schedule(model, now)
        for gone in set(self._seen) - set(tokens):
            del self._seen[gone]
        self._next_scan = now + self.scan_s
        if resync:
            self._next_resync = now + RESYNC_S

    def next_wake(self) -> float:
        head = self.queue[0][0] if self.queue else float("inf")
        return min(head, self._next_scan)

    def run_due(self) -> int:
        """Reconcile every model whose wake time has come; returns how many."""
        now = self.clock.now()
        if now >= self._next_scan:
            self.scan()
        done = 0
        while self.queue and self.queue[0][0] <= now:
            at, _, model = heapq.heappop(self.queue)
            if self.scheduled.get(model) != at:
                continue  # superseded by an earlier wake
            del self.scheduled[model]
            self.reconcile(model)
            done += 1
        return done

    def reconcile(self, model: str) -> Result | None:
        now = self.clock.now()
        try:
            with self.store.lock(model, self.holder):
                ms = self.store.load(model)
                rollout_id = ms.rollout.id if ms.rollout else None
                entry = self.reconcilers.get(model)
                if entry is None or entry[0] != rollout_id:  # a new rollout may bring a new spec
                    entry = (rollout_id, Reconciler(self.services_for(model, ms), self.holder))
                    self.reconcilers[model] = entry
                result = entry[1].reconcile(model, state=ms)
        except Locked:
            self.stats.skipped_locked += 1
            self.schedule(model, now + LOCKED_RETRY_S)
            return None
        except RolloutError as exc:
            self.stats.errors += 1
            log.warning("%s: %s", model, exc)
            self.schedule(model, now + ERROR_RETRY_S)
            return None
        except Exception:
            self.stats.errors += 1
            log.exception("reconciling %s failed", model)
            self.schedule(model, now + ERROR_RETRY_S)
            return None
        self.stats.reconciles += 1
        self._count_decisions(model, result.state)
        if result.wake_at is not None:
            self.schedule(model, result.wake_at)
        if self.on_result is not None:
            self.on_result(model, result)
        return result

    def _count_decisions(self, model: str, after: ModelState) -> None:
        """Count the steps that ended since this model was last reconciled, by outcome."""
        before = self.summaries.get(model)
        summary = Summary.of(after)
        r = after.rollout
        if r is not None:
            seen = before.steps_recorded if before is not None and before.rollout_id == r.id else 0
            for rec in r.steps[seen:]:
                self.stats.decisions[rec.outcome] = self.stats.decisions.get(rec.outcome, 0) + 1
        self.summaries[model] = summary

    def run(self, stop: threading.Event, max_sleep_s: float = 1.0) -> None:
        """Serve until ``stop`` is set (waiting on the real clock between wakes)."""
        self.scan()
        while not stop.is_set():
            self.run_due()
            delay = max(0.0, min(self.next_wake() - self.clock.now(), max_sleep_s))
            stop.wait(delay)


# ------------------------------------------------------------------ /metrics and /healthz


def metrics_registry(controller: Controller):  # type: ignore[no-untyped-def]
    """A Prometheus registry whose collector reads the controller's last states."""
    from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            by_phase = GaugeMetricFamily("rollout_rollouts", "Rollouts by phase (the current one of each model)",
                                         labels=["phase"])
            counts: dict[str, int] = {}
            weight = GaugeMetricFamily("rollout_candidate_weight", "Current candidate traffic weight, percent",
                                       labels=["model", "candidate"])
            last = GaugeMetricFamily("rollout_metric_last_value", "Last measured value of each analysis metric",
                                     labels=["model", "metric", "version"])
            for model, summary in sorted(controller.summaries.items()):
                if summary.phase is None:
                    continue
                counts[summary.phase] = counts.get(summary.phase, 0) + 1
                weight.add_metric([model, summary.candidate or ""], summary.weight)
                for metric, version, value in summary.last_values:
                    last.add_metric([model, metric, version], value)
            for phase, n in sorted(counts.items()):
                by_phase.add_metric([phase], n)
            decisions = CounterMetricFamily("rollout_decisions", "Steps ended, by outcome", labels=["outcome"])
            for outcome, n in sorted(controller.stats.decisions.items()):
                decisions.add_metric([outcome], n)
            reconciles = CounterMetricFamily("rollout_reconciles", "Reconciles done")
            reconciles.add_metric([], controller.stats.reconciles)
            errors = CounterMetricFamily("rollout_reconcile_errors", "Reconciles that raised")
            errors.add_metric([], controller.stats.errors)
            yield from (by_phase, weight, last, decisions, reconciles, errors)

    registry = CollectorRegistry()
    registry.register(_Collector())
    return registry


def serve_http(controller: Controller, port: int, address: str = "127.0.0.1") -> tuple[object, int]:
    """/metrics and /healthz on ``address``:``port`` (0: any free port), in a thread.
    127.0.0.1 by default; in a pod 0.0.0.0, so the kubelet's probes reach it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = metrics_registry(controller)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/metrics":
                body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                body, ctype, code = b"ok\n", "text/plain", 200
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="controller-http", daemon=True).start()
    return server, server.server_address[1]


# ------------------------------------------------------------------ the local controller


def local_services(home: Path) -> Callable[[str, ModelState], Services]:
    """Services of a model on this machine, built from the spec its rollout was started with."""
    from rollout import app as wiring
    from rollout.gates import WebhookCaller
    from rollout.spec import parse_spec

    def build(model: str, ms: ModelState) -> Services:
        last = ms.rollout or (ms.history[0] if ms.history else None)
        if last is None:
            raise RolloutError(f"model {model!r} has no rollout state to reconcile")
        spec = parse_spec(last.spec, source=f"the stored spec of {model}")
        platform = wiring.make_platform(spec, home)
        return Services(store=wiring.make_store(spec, home), platform=platform,
                        providers=wiring.make_providers(spec, platform), gate=WebhookCaller(platform))

    return build


def run_local_controller(home: Path, port: int = 9464, once: bool = False,
                         echo: Callable[[str], None] = print, stop: threading.Event | None = None,
                         address: str = "127.0.0.1") -> int:
    """Lead (or wait to lead) for ``home`` and reconcile its models until stopped."""
    from rollout.state import FileStateStore

    holder = holder_identity(CONTROLLER_COMMAND)
    stop = stop or threading.Event()
    store = FileStateStore(home)

    shown: dict[str, tuple[object, ...]] = {}

    def report(model: str, result: Result) -> None:
        """One line per change of a model's phase, step or split (not per reconcile)."""
        r = result.state.rollout
        if r is None:
            return
        signature = (r.id, r.phase, r.step_index, r.traffic.weight)
        if shown.get(model) != signature:
            shown[model] = signature
            echo(f"{model}: {r.candidate.version} {r.phase.value} step {min(r.step_index + 1, len(r.plan))}/"
                 f"{len(r.plan)} weight {r.traffic.weight}%")

    controller = Controller(store, local_services(home), SystemClock(), holder=holder, on_result=report)
    server, bound = serve_http(controller, port, address)
    echo(f"controller for {home}: /metrics and /healthz on http://{address}:{bound} (pid {os.getpid()})")
    try:
        while not stop.is_set():  # the leader file also says where /metrics are (`rollout local status`)
            with leadership(home, f"{holder}, /metrics on http://{address}:{bound}") as leading:
                if leading:
                    echo(f"leading for {home}")
                    if once:
                        controller.scan()
                        controller.run_due()
                        return 0
                    controller.run(stop)
                    return 0
            if once:
                echo(f"another controller leads for {home}: {leader(home)}")
                return 0
            stop.wait(1.0)  # standby: the leader's lock is released by the kernel when it dies
        return 0
    finally:
        server.shutdown()  # type: ignore[attr-defined]
