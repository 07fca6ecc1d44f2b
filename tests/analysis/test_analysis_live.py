"""Analysis against the real thing: the local platform's router and MLServer scraped by
a real Prometheus, the real engine deciding, and Prometheus stopped mid-analysis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from rollout.analysis.base import QueryContext, Status
from rollout.analysis.prometheus import PrometheusProvider
from rollout.clock import SystemClock
from rollout.demo.models import iris_request
from rollout.engine import Engine, Services, exit_code_for
from rollout.platforms.base import Traffic
from rollout.platforms.local.platform import LocalPlatform
from rollout.registry.base import ModelVersion
from rollout.spec import parse_spec
from rollout.state import Event, FileStateStore, ModelState, Phase
from tests.fixtures.prometheus import PrometheusServer, free_port
from tests.waiting import stop_process

INFER = "/v2/models/iris/infer"


class Load:
    """Background clients sending infer requests to the router until stopped."""

    def __init__(self, url: Callable[[], str | None]) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        session = requests.Session()
        while not self.stop_event.is_set():
            base = self.url()
            try:
                if base:
                    session.post(base + INFER, json=iris_request(), timeout=5)
                    self.sent += 1
            except requests.RequestException:
                pass
            self.stop_event.wait(0.01)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)


def send(session: requests.Session, url: str, n: int, check: bool = False) -> None:
    for _ in range(n):
        resp = session.post(url, json=iris_request(), timeout=5)
        if check:
            resp.raise_for_status()


def spec_for(prom_url: str, router_port: int, metric: dict, duration_s: float = 20, inconclusive: str = "pause"):
    return parse_spec({
        "model": "iris",
        "registry": {"type": "git", "url": "/nonexistent"},
        "platform": {"type": "local", "server": "builtin", "router_port": router_port},
        "strategy": {"type": "canary", "steps": [{"set_weight": 50}, {"analysis": {"duration_s": duration_s}}],
                     "scale_down_delay_s": 0},
        "analysis": {"interval_s": 1, "inconclusive": inconclusive, "prometheus": {"url": prom_url, "timeout_s": 2, "scrape_interval_s": 1},
                     "metrics": [{"name": "errors", "provider": "prometheus", **metric}]},
    })


def engine_for(spec, home: Path, listeners=()) -> Engine:
    platform = LocalPlatform("iris", home, server="builtin", router_port=spec.platform.router_port)
    services = Services(store=FileStateStore(home), platform=platform,
                        providers={"prometheus": PrometheusProvider.from_spec(spec.analysis.prometheus)},
                        clock=SystemClock(), listeners=list(listeners), poll_s=0.2)
    return Engine(spec, services)


# ------------------------------------------------------------------ local router pack


@pytest.fixture(scope="module")
def router_split(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory,
                 iris_models: dict[str, Path]) -> Iterator[PrometheusServer]:
    """iris v1 (good) and v2 (fails every predict) at 50/50 behind the real router."""
    home = tmp_path_factory.mktemp("router-pack")
    platform = LocalPlatform("iris", home, server="builtin")
    try:
        platform.deploy(ModelVersion("iris", "v1", str(iris_models["good"])))
        platform.deploy(ModelVersion("iris", "v2", str(iris_models["broken"])))
        platform.set_traffic(Traffic(stable="v1", candidate="v2", weight=50))
        prometheus.add_target("router-pack", platform.endpoint().split("://")[1])
        session = requests.Session()
        # Counters are born at their first value: Prometheus must have seen them before the
        # bulk of the traffic, or increase() rightly counts nothing.
        for n, total in ((10, 10), (190, 200)):
            send(session, platform.endpoint() + INFER, n)
            prometheus.wait_for('sum(rollout_router_requests_total{model="iris"})', min_value=total)
        yield prometheus
    finally:
        platform.down()


def test_local_router_pack_separates_versions(router_split: PrometheusServer) -> None:
    p = PrometheusProvider(router_split.url, scrape_interval_s=1.0)
    ctx = lambda v: QueryContext(model="iris", version=v, stable="v1", candidate="v2", window_s=60, weight=50)  # noqa: E731
    good, bad = p.query("pack:local-router/error_rate", ctx("v1")), p.query("pack:local-router/error_rate", ctx("v2"))
    assert good.status is Status.VALUE and good.value == 0.0  # no 5xx series at all: 0, not "no data"
    assert bad.value == pytest.approx(1.0)
    assert 50 < good.detail["requests"] and 50 < bad.detail["errors"]
    p99 = p.query("pack:local-router/latency_p99_ms", ctx("v1"))
    mean = p.query("pack:local-router/latency_mean_ms", ctx("v1"))
    assert p99.status is Status.VALUE and 0 < mean.value <= p99.value <= 10_000
    slow = p.query("pack:local-router/slow_ratio>10000ms", ctx("v1"))
    assert slow.value == 0.0 and slow.detail["requests"] > 50
    assert p.query("pack:local-router/error_rate", ctx("v9")).status is Status.NO_DATA


# ------------------------------------------------------------------ MLServer pack

MLSERVER = shutil.which("mlserver") or str(Path(sys.executable).parent / "mlserver")


@pytest.fixture(scope="module")
def mlserver(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory,
             iris_models: dict[str, Path]) -> Iterator[str]:
    if not Path(MLSERVER).exists():
        pytest.skip("mlserver is not installed in this environment")
    d = tmp_path_factory.mktemp("mlserver")
    shutil.copy(iris_models["good"] / "model.joblib", d / "model.joblib")
    http_port, metrics_port = free_port(), free_port()
    (d / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(),
                                                 "metrics_port": metrics_port, "parallel_workers": 0}))
    (d / "model-settings.json").write_text(json.dumps({"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                                                       "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    log = open(d / "mlserver.log", "wb")
    proc = subprocess.Popen([MLSERVER, "start", str(d)], cwd=d, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/v2/models/iris/versions/v1/ready", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (d / "mlserver.log").read_text()[-2000:]
            time.sleep(0.2)
        # the target label rollout's PodMonitor sets from the pod's app.kubernetes.io/version
        prometheus.add_target("mlserver", f"127.0.0.1:{metrics_port}", labels={"model_version": "v1"})
        # the path a caller through a Service or gateway uses: no version in it, so MLServer's
        # own version label is "None" and only the target label can tell the versions apart
        infer = f"{url}/v2/models/iris/infer"
        for n, total in ((5, 5), (30, 35)):  # scraped before most of the traffic, as in router_split
            send(requests.Session(), infer, n, check=True)
            prometheus.wait_for('sum(model_infer_request_success_total{model="iris",model_version="v1"})',
                                min_value=total)
        assert prometheus.query('model_infer_request_success_total{version="v1"}') == []  # MLServer's label: "None"
        yield url
    finally:
        stop_process(proc)


def test_mlserver_pack_counts_and_mean_latency(prometheus: PrometheusServer, mlserver: str) -> None:
    p = PrometheusProvider(prometheus.url, scrape_interval_s=1.0)
    ctx = QueryContext(model="iris", version="v1", stable=None, candidate="v1", window_s=60)
    rate = p.query("pack:mlserver/error_rate", ctx)
    assert rate.status is Status.VALUE and rate.value == 0.0  # MLServer has no failure series yet: 0 errors
    assert rate.detail["requests"] >= 25
    mean = p.query("pack:mlserver/latency_mean_ms", ctx)
    assert mean.status is Status.VALUE and 0 < mean.value < 1000
    p99 = p.query("pack:mlserver/latency_p99_ms", ctx)  # a summary without buckets: said, not guessed
    assert p99.status is Status.ERROR and "mean only" in p99.error


# ------------------------------------------------------------------ the engine


def test_broken_candidate_is_rolled_back_early_by_the_sequential_judge(prometheus: PrometheusServer, tmp_path: Path,
                                                                        local_home: Path,
                                                                        iris_version) -> None:
    port = free_port()
    prometheus.add_target("engine-sequential", f"127.0.0.1:{port}")
    # warm-up 10 s, not the default 30 s of waiting: its rule is the unit tests' (test_sequential.py);
    # here a real one is set aside before the judge decides, well inside the 60 s step
    spec = spec_for(prometheus.url, port, {"query": "pack:local-router/error_rate",
                                           "judge": {"type": "sequential", "alpha": 0.01, "warmup_s": 10}},
                    duration_s=60)
    engine = engine_for(spec, local_home)
    engine.start(iris_version("v1", "good"))
    with Load(engine.s.platform.endpoint):
        ms = engine.start(iris_version("v2", "broken"))
    r = ms.rollout or ms.history[0]
    assert r.phase is Phase.ROLLED_BACK and not r.promoted
    assert "final" in r.reason and "1/alpha" in r.reason
    decisive = [m for m in r.measurements if m.verdict == "fail"][-1]
    assert decisive.detail["candidate.errors"] > 0 and decisive.detail["stable.requests"] > 0
    assert "warmup.candidate.requests" in decisive.detail  # the warm-up's counts were set aside, not judged
    stored = FileStateStore(local_home).load("iris")
    assert stored.stable.version == "v1" and stored.history[0].measurements  # every measurement kept


def test_prometheus_outage_pauses_instead_of_rolling_back_or_promoting(own_prometheus: PrometheusServer,
                                                                     local_home: Path, iris_version) -> None:
    port = free_port()
    own_prometheus.add_target("router", f"127.0.0.1:{port}")
    spec = spec_for(own_prometheus.url, port, {"query": "pack:local-router/error_rate",
                                               "judge": {"type": "threshold", "max": 0.05},
                                               "consecutive_error_limit": 2}, duration_s=60)
    stopped: list[float] = []

    def stop_prometheus_after_first_value(event: Event, ms: ModelState) -> None:
        if event.kind == "measurement" and not stopped and ms.rollout and ms.rollout.measurements[-1].status == "value":
            own_prometheus.stop()
            stopped.append(event.at)

    engine = engine_for(spec, local_home, [stop_prometheus_after_first_value])
    engine.start(iris_version("v1", "good"))
    with Load(engine.s.platform.endpoint):
        own_prometheus.wait_for('sum(rollout_router_requests_total{model="iris"})', min_value=1, timeout_s=30)
        ms = engine.start(iris_version("v2", "good"))
    r = ms.rollout
    assert stopped, "Prometheus never returned a value before the outage"
    assert r is not None and r.phase is Phase.PAUSED and exit_code_for(r.phase) == 4
    assert not r.promoted and ms.stable.version == "v1"
    statuses = [m.status for m in r.measurements]
    assert "value" in statuses and statuses[-3:] == ["error"] * 3
    assert "unreachable" in r.reason and "consecutive_error_limit" in r.reason
    assert all(m.verdict != "fail" for m in r.measurements)  # an outage is not a bad candidate


def test_prometheus_outage_with_fail_policy_rolls_back_saying_why(local_home: Path, iris_version) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: an outage from the start
    spec = spec_for(dead, port, {"query": "pack:local-router/error_rate", "judge": {"type": "threshold", "max": 0.05},
                                 "consecutive_error_limit": 1}, inconclusive="fail")
    engine = engine_for(spec, local_home)
    engine.start(iris_version("v1", "good"))
    ms = engine.start(iris_version("v2", "good"))
    r = ms.history[0]
    assert r.phase is Phase.ROLLED_BACK and not r.promoted
    assert "inconclusive" in r.reason and "policy: fail" in r.reason and "unreachable" in r.reason
