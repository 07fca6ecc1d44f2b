"""The prometheus provider and the metric packs against a real Prometheus scraping a
synthetic data-plane exporter (Istio, Envoy / Gateway API, Knative series with known
rates), plus the three outcomes: value, no data, provider error."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from rollout.analysis.base import QueryContext, Status
from rollout.analysis.prometheus import Credentials, PrometheusProvider
from rollout.spec import PrometheusSpec
from tests.fixtures.prometheus import PrometheusServer, free_port


@pytest.fixture(scope="module")
def dataplane(prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.exporter", str(port)])
    try:
        prometheus.add_target("dataplane", f"127.0.0.1:{port}")
        # increase() needs a few samples: wait until a 3 s window has data for every pack
        # increase() needs samples across the whole window the tests use (5 s): wait until
        # every pack's series has 6 of them.
        for series in ("istio_requests_total", "envoy_cluster_upstream_rq_total", "revision_request_count"):
            prometheus.wait_for(f"min(count_over_time({series}[6s]))", min_value=6)
        yield prometheus
    finally:
        proc.terminate()
        proc.wait(5)


def ctx(version: str, model: str = "iris", namespace: str = "prod", window_s: float = 5.0) -> QueryContext:
    return QueryContext(model=model, version=version, stable="v1", candidate=version, namespace=namespace,
                        window_s=window_s, weight=50)


@pytest.mark.parametrize("pack", ["istio", "gateway-api", "knative"])
def test_pack_error_rate_and_counts_per_version(dataplane: PrometheusServer, pack: str) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    good = p.query(f"pack:{pack}/error_rate", ctx("v1"))
    bad = p.query(f"pack:{pack}/error_rate", ctx("v2"))
    assert good.status is Status.VALUE and bad.status is Status.VALUE, (good, bad)
    assert good.value == pytest.approx(0.01, abs=0.005)
    assert bad.value == pytest.approx(0.10, abs=0.02)
    # counts for the sequential judge ride along
    assert good.detail["requests"] > 100 and good.detail["bad"] == good.detail["errors"]
    success = p.query(f"pack:{pack}/success_rate", ctx("v1"))
    assert success.value == pytest.approx(0.99, abs=0.005)
    rate = p.query(f"pack:{pack}/request_rate", ctx("v1", window_s=2))  # a window the data fill
    assert rate.value == pytest.approx(100, rel=0.3)


@pytest.mark.parametrize("pack", ["istio", "gateway-api", "knative"])
def test_pack_latency_slow_ratio_mean_and_percentiles(dataplane: PrometheusServer, pack: str) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    slow = p.query(f"pack:{pack}/slow_ratio>250ms", ctx("v2"))
    assert slow.status is Status.VALUE, slow
    assert slow.value == pytest.approx(0.5, abs=0.05)
    assert slow.detail["slow"] == slow.detail["bad"] > 0
    mean = p.query(f"pack:{pack}/latency_mean_ms", ctx("v1"))  # 90% at 125 ms, 10% at 500 ms
    assert mean.value == pytest.approx(162.5, rel=0.05)
    p99 = p.query(f"pack:{pack}/latency_p99_ms", ctx("v2"))
    assert 250 < p99.value <= 1000


def test_istio_pack_counts_only_destination_reporter(dataplane: PrometheusServer) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    requests = p.query("pack:istio/request_rate", ctx("v1", window_s=2))
    assert requests.value == pytest.approx(100, rel=0.3)  # the source-reporter series (7x) are not added


def test_gateway_api_pack_counts_only_rollouts_own_clusters(dataplane: PrometheusServer) -> None:
    """Look-alike Envoy Gateway clusters (another route, rule, namespace or backend index,
    50% errors) are never added to a version's counts."""
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    m = p.query("pack:gateway-api/request_rate", ctx("v2", window_s=2))
    assert m.value == pytest.approx(100, rel=0.3)  # one cluster's worth, not two or more


def test_gateway_api_pack_measures_a_shadow_on_the_mirror_cluster(dataplane: PrometheusServer) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    shadow = QueryContext(model="shadow", version="v2", stable="v1", candidate="v2", namespace="prod",
                          window_s=5.0, weight=0, mirror=100)
    assert p.query("pack:gateway-api/error_rate", shadow).value == pytest.approx(0.02, abs=0.005)
    stable = p.query("pack:gateway-api/error_rate", replace(shadow, version="v1"))
    assert stable.value == pytest.approx(0.01, abs=0.005)  # the mirror is not stable's


def test_unknown_version_is_no_data_not_an_error(dataplane: PrometheusServer) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    for query in ("pack:istio/error_rate", "pack:istio/latency_p99_ms",
                  'sum(rate(istio_requests_total{destination_workload="{{model}}-{{version}}"}[{{interval}}]))'):
        m = p.query(query, ctx("v9"))
        assert m.status is Status.NO_DATA, (query, m)


def test_nan_is_no_data(dataplane: PrometheusServer) -> None:
    assert PrometheusProvider(dataplane.url, scrape_interval_s=1.0).query("0/0", ctx("v1")).status is Status.NO_DATA


def test_custom_template_gets_a_value(dataplane: PrometheusServer) -> None:
    q = ('sum(increase(istio_requests_total{reporter="destination",destination_workload="{{model}}-{{version}}",'
         'destination_workload_namespace="{{namespace}}",response_code=~"5.."}[{{interval}}]))')
    m = PrometheusProvider(dataplane.url, scrape_interval_s=1.0).query(q, ctx("v2"))
    assert m.status is Status.VALUE and m.value > 0


def test_bad_promql_and_many_series_are_provider_errors(dataplane: PrometheusServer) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    bad = p.query("sum(rate(istio_requests_total[", ctx("v1"))
    assert bad.status is Status.ERROR and "HTTP 400" in bad.error
    many = p.query("istio_requests_total", ctx("v1"))
    assert many.status is Status.ERROR and "aggregate" in many.error


def test_unknown_pack_or_query_is_an_error_listing_what_exists(dataplane: PrometheusServer) -> None:
    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    m = p.query("pack:linkerd/error_rate", ctx("v1"))
    assert m.status is Status.ERROR and "istio" in m.error and "local-router" in m.error
    m = p.query("pack:istio/slow_ratio>300ms", ctx("v1"))
    assert m.status is Status.ERROR and "250" in m.error


def test_range_query_returns_a_series(dataplane: PrometheusServer) -> None:
    import time

    p = PrometheusProvider(dataplane.url, scrape_interval_s=1.0)
    dataplane.wait_for('count_over_time(istio_requests_total{destination_workload="iris-v1",'
                       'reporter="destination",response_code="200"}[4s])', min_value=4)
    now = time.time()
    series = p.query_range('sum(rate(istio_requests_total{reporter="destination",'
                           'destination_workload="{{model}}-{{version}}"}[5s]))', ctx("v1"), now - 2, now)
    assert series and all(v > 0 for _, v in series)


def test_unreachable_prometheus_is_an_error_not_no_data() -> None:
    m = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_s=2).query("pack:istio/error_rate", ctx("v1"))
    assert m.status is Status.ERROR and "unreachable" in m.error


# ------------------------------------------------------------------ credentials


class _Echo(http.server.BaseHTTPRequestHandler):
    """A misbehaving 'Prometheus' that echoes the request headers in a 500 body."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        _Echo.seen.append(dict(self.headers))
        body = f'{{"status":"error","error":"bad auth {dict(self.headers)}"}}'.encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Echo.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bearer_token_from_env_is_sent_but_never_in_error_messages(echo_server: str, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PROM_TOKEN", "s3cr3t-token-value")
    spec = PrometheusSpec(url=echo_server, bearer_token_env="PROM_TOKEN", headers={"X-Scope-OrgID": "team-a"})
    m = PrometheusProvider.from_spec(spec).query("up", ctx("v1"))
    assert m.status is Status.ERROR
    assert _Echo.seen[0]["Authorization"] == "Bearer s3cr3t-token-value"
    assert _Echo.seen[0]["X-Scope-OrgID"] == "team-a"
    assert "s3cr3t" not in m.error and "s3cr3t" not in caplog.text
    assert "***" in m.error


def test_basic_auth_and_token_file(echo_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PROM_USER", "alice")
    monkeypatch.setenv("PROM_PASS", "hunter2-password")
    m = PrometheusProvider(echo_server, Credentials(basic_auth_user_env="PROM_USER",
                                                    basic_auth_password_env="PROM_PASS")).query("up", ctx("v1"))
    assert _Echo.seen[-1]["Authorization"].startswith("Basic ")
    assert "hunter2" not in m.error
    token = tmp_path / "token"
    token.write_text("file-token-123\n")
    m = PrometheusProvider(echo_server, Credentials(bearer_token_file=str(token))).query("up", ctx("v1"))
    assert _Echo.seen[-1]["Authorization"] == "Bearer file-token-123"
    assert "file-token-123" not in m.error


def test_missing_credentials_are_a_provider_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    m = PrometheusProvider("http://127.0.0.1:1", Credentials(bearer_token_env="NOPE_TOKEN")).query("up", ctx("v1"))
    assert m.status is Status.ERROR and "NOPE_TOKEN" in m.error


def test_url_userinfo_never_appears_in_errors() -> None:
    m = PrometheusProvider(f"http://bob:pa55word@127.0.0.1:{free_port()}", timeout_s=1).query("up", ctx("v1"))
    assert m.status is Status.ERROR and "pa55word" not in m.error


def test_secret_headers_come_from_the_environment_and_are_never_shown(
        echo_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """headers_env: the value is read at query time, sent, and scrubbed from any message."""
    monkeypatch.setenv("PROM_AUTH", "Bearer s3cr3t-header-value")
    spec = PrometheusSpec(url=echo_server, headers_env={"Authorization": "PROM_AUTH"})
    m = PrometheusProvider.from_spec(spec).query("up", ctx("v1"))
    assert _Echo.seen[-1]["Authorization"] == "Bearer s3cr3t-header-value"
    assert "s3cr3t" not in m.error and "s3cr3t" not in caplog.text
    monkeypatch.delenv("PROM_AUTH")
    missing = PrometheusProvider.from_spec(spec).query("up", ctx("v1"))
    assert missing.status is Status.ERROR and "PROM_AUTH" in missing.error
