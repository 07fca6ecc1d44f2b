"""The built-in router against real V2 server processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
import requests

from rollout.demo.models import iris_request
from rollout.demo import traffic
from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.supervisor import ProcessRecord
from rollout.registry.base import ModelVersion
from tests.protocol.conftest import DATA_PLANES
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

INFER = "/v2/models/iris/infer"


class Procs:
    """Starts routers (and extra servers) under one home; the fixture stops every one."""

    def __init__(self, home: Path, plane: str = "python") -> None:
        self.home = home
        self.plane = plane  # the routers' data plane (nginx_front)
        self.started: list[ProcessRecord] = []

    def server(self, mv: ModelVersion) -> ProcessRecord:
        record = sv.start_server(self.home, mv, sv.BUILTIN, ready_timeout_s=20)
        self.started.append(record)
        return record

    def router(self, port: int = 0, **options: float | int) -> ProcessRecord:
        record = sv.start_router(self.home, "iris", port, options={**options, "data_plane": self.plane})
        self.started.append(record)
        return record

    def stop_all(self) -> None:
        for record in self.started:
            sv.stop(record, 2.0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, iris_models: dict[str, Path]) -> Iterator[dict[str, ProcessRecord]]:
    """Model servers shared by this module's tests (they are stateless): ``v1`` good,
    ``v2`` a good model that disagrees with v1 on some inputs, ``same`` v1's model
    again, ``slow`` +1.5 s per predict, ``broken`` fails every predict."""
    p = Procs(tmp_path_factory.mktemp("servers"))
    plan = {"v1": ("v1", "good"), "v2": ("v2", "other"), "same": ("v2-same", "good"),
            "slow": ("v2-slow", "slow"), "broken": ("v2-broken", "broken")}
    try:
        with ThreadPoolExecutor(len(plan)) as pool:
            futures = {key: pool.submit(p.server, ModelVersion("iris", version, str(iris_models[kind])))
                       for key, (version, kind) in plan.items()}
            started = {key: f.result() for key, f in futures.items()}
        yield started
    finally:
        p.stop_all()


@pytest.fixture(params=DATA_PLANES)
def procs(request: pytest.FixtureRequest, local_home: Path) -> Iterator[Procs]:
    p = Procs(local_home, request.param)
    yield p
    p.stop_all()


@pytest.fixture
def two_backends(procs: Procs, servers: dict[str, ProcessRecord]) -> tuple[ProcessRecord, ...]:
    """v1 (good) and v2 (the other good model) behind a fresh router."""
    return servers["v1"], servers["v2"], procs.router()


def put_config(router: ProcessRecord, **config: Any) -> requests.Response:
    return requests.put(router.url + "/router/config", json=config, timeout=5)


def split(v1: ProcessRecord, v2: ProcessRecord, **kw: Any) -> dict[str, Any]:
    return {"backends": {"v1": v1.url, "v2": v2.url}, "stable": "v1", "candidate": "v2", **kw}


def stats(router: ProcessRecord, window_s: int = 60) -> dict[str, Any]:
    resp = requests.get(router.url + "/router/stats", params={"window_s": window_s}, timeout=5)
    resp.raise_for_status()
    return resp.json()




def test_weights_split_real_requests_within_sampling_tolerance(two_backends: tuple[ProcessRecord, ...]) -> None:
    v1, v2, router = two_backends
    assert put_config(router, **split(v1, v2, weight=30)).status_code == 200

    results = traffic.run(router.url + INFER, n=1000, concurrency=16)

    assert all(r.status == 200 for r in results)
    share = sum(r.version == "v2" for r in results) / len(results)
    assert 0.25 <= share <= 0.35
    versions = stats(router)["versions"]
    assert versions["v1"]["requests"] + versions["v2"]["requests"] == 1000
    assert versions["v2"]["requests"] == sum(r.version == "v2" for r in results)


def test_changing_weights_under_concurrent_load_drops_no_request(two_backends: tuple[ProcessRecord, ...]) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=0))

    async def scenario() -> tuple[list[traffic.Sample], int]:
        changes = 0
        async with aiohttp.ClientSession() as session:
            load = asyncio.create_task(traffic.burst(router.url + INFER, 1500, 12, session=session))
            while not load.done():
                for weight, mirror in ((50, 20), (100, 0), (0, 100), (30, 0)):
                    async with session.put(router.url + "/router/config",
                                           json=split(v1, v2, weight=weight, mirror=mirror)) as resp:
                        assert resp.status == 200
                    changes += 1
                    await asyncio.sleep(0.01)
            return await load, changes

    results, changes = asyncio.run(scenario())

    assert changes >= 8
    assert [r for r in results if r.status != 200] == []
    assert {r.version for r in results} == {"v1", "v2"}


def test_mirror_of_the_same_model_always_agrees(procs: Procs, servers: dict[str, ProcessRecord]) -> None:
    v1, v2, router = servers["v1"], servers["same"], procs.router()
    put_config(router, **split(v1, v2, weight=0, mirror=100))

    results = traffic.run(router.url + INFER, n=60, concurrency=4, body=lambda i: iris_request(3, seed=i))

    assert {r.version for r in results} == {"v1"}  # the caller only ever sees stable
    wait_for(lambda: sum(stats(router)["versions"]["v2"]["mirror"].values()) == 60, "60 mirror results")
    candidate = stats(router)["versions"]["v2"]
    assert candidate["mirror"] == {"agree": 60, "disagree": 0, "error": 0, "skipped": 0}
    assert candidate["shadow_requests"] == 60


def test_mirror_of_a_different_model_counts_disagreements(two_backends: tuple[ProcessRecord, ...]) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=0, mirror=100))

    traffic.run(router.url + INFER, n=100, concurrency=4, body=lambda i: iris_request(4, seed=i))

    wait_for(lambda: sum(stats(router)["versions"]["v2"]["mirror"].values()) == 100, "100 mirror results")
    mirror = stats(router)["versions"]["v2"]["mirror"]
    assert mirror["disagree"] > 0 and mirror["agree"] > 0 and mirror["error"] == 0
    metrics = requests.get(router.url + "/metrics", timeout=5).text
    assert 'rollout_router_mirror_total{model="iris",result="disagree",version="v2"}' in metrics


def test_caller_gets_stable_answers_while_slow_shadows_are_still_running(
    procs: Procs, servers: dict[str, ProcessRecord]
) -> None:
    v1, slow, router = servers["v1"], servers["slow"], procs.router()
    put_config(router, **split(v1, slow, weight=0, mirror=100))

    results = traffic.run(router.url + INFER, n=5, concurrency=1)

    # Each shadow takes 1.5 s; five sequential callers done while shadows are still in
    # flight means no caller waited for its shadow.
    assert [r.status for r in results] == [200] * 5
    now = stats(router)
    assert now["versions"]["v2"]["inflight"] >= 1
    assert sum(now["versions"]["v2"]["mirror"].values()) < 5
    wait_for(lambda: stats(router)["versions"]["v2"]["mirror"]["agree"] == 5, "slow shadows to finish")


def test_preview_path_always_reaches_the_candidate_and_counts_under_it(
    two_backends: tuple[ProcessRecord, ...]
) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=0))

    results = traffic.run(router.url + "/preview" + INFER, n=20, concurrency=2)

    assert {r.version for r in results} == {"v2"}
    assert stats(router)["versions"]["v2"]["preview_requests"] == 20
    put_config(router, backends={"v1": v1.url}, stable="v1")
    resp = requests.post(router.url + "/preview" + INFER, json=iris_request(), timeout=5)
    assert resp.status_code == 503 and "no candidate" in resp.json()["error"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weight": 150}, "weight"),
        ({"mirror": -1}, "mirror"),
        ({"weight": "30"}, "weight"),
        ({"candidate": "v3"}, "candidate"),
        ({"stable": "v9"}, "stable"),
        ({"candidate": None, "weight": 10}, "weight"),
        ({"backends": {"v1": "localhost:1", "v2": "http://x"}}, "backends"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_config_is_refused_with_400_naming_the_field(
    procs: Procs, change: dict[str, Any], field: str
) -> None:
    router = procs.router()
    good = {"backends": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, "stable": "v1",
            "candidate": "v2", "weight": 10, "mirror": 0}
    assert put_config(router, **good).status_code == 200

    resp = put_config(router, **{**good, **change})

    assert resp.status_code == 400
    assert resp.json()["field"] == field
    assert field in resp.json()["error"]
    assert requests.get(router.url + "/router/config", timeout=5).json()["weight"] == 10  # unchanged


def test_failures_count_as_errors_per_version(procs: Procs, servers: dict[str, ProcessRecord]) -> None:
    v1, broken, router = servers["v1"], servers["broken"], procs.router()
    dead_url = f"http://127.0.0.1:{sv.free_port()}"
    put_config(router, **split(v1, broken, weight=100))

    results = traffic.run(router.url + INFER, n=10, concurrency=2)
    put_config(router, backends={"v1": v1.url, "v3": dead_url}, stable="v1", candidate="v3", weight=100)
    failed_over = traffic.run(router.url + INFER, n=4, concurrency=1)
    put_config(router, backends={"v3": dead_url}, stable="v3", candidate=None, weight=0)
    unreachable = traffic.run(router.url + INFER, n=2, concurrency=1)
    # Both gone: the failover's own failure is the router's JSON error, naming that version.
    also_dead = f"http://127.0.0.1:{sv.free_port()}"
    put_config(router, backends={"v1": also_dead, "v3": dead_url}, stable="v1", candidate="v3", weight=100)
    both = requests.post(router.url + INFER, json=iris_request(), timeout=10)

    assert {r.status for r in results} == {500}
    # A version that refuses the connection never got the request: it goes to the other one
    # of the split (and the refusal counts against the dead one); with no other, a 502.
    assert {(r.status, r.version) for r in failed_over} == {(200, "v1")}
    assert {r.status for r in unreachable} == {502}
    assert both.status_code == 502 and both.headers["content-type"].startswith("application/json"), both.text
    assert "backend v1" in both.json()["error"], both.text
    versions = stats(router)["versions"]
    assert versions["v2"]["errors"] == 10 and versions["v2"]["codes"] == {"500": 10}
    assert versions["v3"]["errors"] == 7 and versions["v3"]["connection_errors"] == 7
    assert versions["v2"]["latency_ms"]["p99"] is not None
    metrics = requests.get(router.url + "/metrics", timeout=5).text
    assert 'rollout_router_requests_total{code="500",kind="live",model="iris",version="v2"} 10.0' in metrics
    assert 'rollout_router_traffic_weight{model="iris",version="v3"} 100.0' in metrics


def test_restarted_router_comes_back_with_the_same_split(two_backends: tuple[ProcessRecord, ...], procs: Procs) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=40, mirror=5))
    before = requests.get(router.url + "/router/config", timeout=5).json()

    os.killpg(router.pid, signal.SIGKILL)
    wait_for(lambda: not sv.is_alive(router), "router to die")
    again = procs.router(port=router.port)

    assert requests.get(again.url + "/router/config", timeout=5).json() == before
    assert traffic.run(again.url + INFER, n=5, concurrency=1)[0].status == 200


def test_stats_window_must_be_within_history(procs: Procs) -> None:
    router = procs.router()
    resp = requests.get(router.url + "/router/stats", params={"window_s": 100000}, timeout=5)
    assert resp.status_code == 400 and resp.json()["field"] == "window_s"


@pytest.mark.parametrize(
    ("raw_body", "field"),
    [
        ('{"backends": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, "stable": "v1", '
         '"candidate": "v2", "weight": NaN}', "weight"),
        ('{"backends": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, "stable": "v1", '
         '"candidate": "v2", "mirror": Infinity}', "mirror"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "float_rtol": NaN}', "float_rtol"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "float_atol": -Infinity}', "float_atol"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "weight": true}', "weight"),
        ('{"backends": ["http://127.0.0.1:1"], "stable": "v1"}', "backends"),
        ('{"backends": {"v1": "http://127.0.0.1:1?x=1"}, "stable": "v1"}', "backends"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": 1}', "stable"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "grpc_backends": {"v1": "no port"}}',
         "grpc_backends"),
        ('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "grpc_backends": {"v2": "127.0.0.1:5"}}',
         "grpc_backends"),
        ('[1, 2]', "(body)"),
        ('{"weight": ', "(body)"),
    ],
)
def test_malformed_admin_bodies_are_400_naming_the_field_and_change_nothing(
    procs: Procs, raw_body: str, field: str
) -> None:
    router = procs.router()
    good = {"backends": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, "stable": "v1",
            "candidate": "v2", "weight": 10, "mirror": 0}
    assert put_config(router, **good).status_code == 200

    resp = requests.put(router.url + "/router/config", data=raw_body, timeout=5,
                        headers={"Content-Type": "application/json"})

    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert resp.json()["field"] == field
    assert field in error if field != "(body)" else "JSON" in error
    assert requests.get(router.url + "/router/config", timeout=5).json()["weight"] == 10


def test_a_damaged_state_file_starts_the_router_on_the_previous_config(procs: Procs) -> None:
    router = procs.router()
    first = {"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1"}
    second = {"backends": {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, "stable": "v1",
              "candidate": "v2", "weight": 20}
    assert put_config(router, **first).status_code == 200
    assert put_config(router, **second).status_code == 200
    sv.stop(router, 2.0)
    state = sv.router_state_path(procs.home, "iris")
    state.write_text('{"backends": {"v1": "http://127.0.0.1:1"}, "stable": "v1", "weight": NaN')  # torn write

    again = procs.router(port=router.port)

    assert requests.get(again.url + "/router/config", timeout=5).json()["stable"] == "v1"
    assert "unreadable; started from the previous copy" in Path(again.log_file).read_text()


def test_a_state_file_with_no_good_copy_refuses_to_start_with_one_line_naming_it(procs: Procs) -> None:
    state = sv.router_state_path(procs.home, "iris")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("{not json")

    with pytest.raises(sv.DeployError) as refused:
        procs.router()

    message = str(refused.value)
    assert str(state) in message and "fix it or delete it" in message
    assert "port" not in message.split("\n")[-1]  # the log's last line says why, not "port taken"


def test_probes_and_metadata_are_counted_apart_from_inference(two_backends: tuple[ProcessRecord, ...]) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=0))
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready"):
        assert requests.get(router.url + path, timeout=5).status_code == 200
    assert requests.get(router.url + "/v2/models/iris", timeout=5).status_code == 200
    assert requests.get(router.url + "/v2", timeout=5).status_code == 200
    assert requests.get(router.url + "/v2/models/wine", timeout=5).status_code == 404
    traffic.run(router.url + INFER, n=5, concurrency=1)

    v1_stats = stats(router)["versions"]["v1"]

    assert v1_stats["requests"] == 5 and v1_stats["errors"] == 0  # inference only
    assert v1_stats["kinds"]["live"]["requests"] == 5
    assert v1_stats["kinds"]["health"]["requests"] == 3
    assert v1_stats["kinds"]["metadata"]["requests"] == 3 and v1_stats["kinds"]["metadata"]["codes"] == {"200": 2, "404": 1}
    metrics = requests.get(router.url + "/metrics", timeout=5).text
    assert 'rollout_router_other_requests_total{code="200",kind="health",model="iris",version="v1"} 3.0' in metrics
    assert 'rollout_router_requests_total{code="200",kind="live",model="iris",version="v1"} 5.0' in metrics


def test_version_pinned_requests_ignore_the_split(two_backends: tuple[ProcessRecord, ...]) -> None:
    v1, v2, router = two_backends
    put_config(router, **split(v1, v2, weight=100))

    pinned = traffic.run(router.url + "/v2/models/iris/versions/v1/infer", n=30, concurrency=3)

    assert {r.version for r in pinned} == {"v1"}
    versions = stats(router)["versions"]
    assert versions["v1"]["kinds"]["pinned"]["requests"] == 30 and versions["v1"]["kinds"]["live"]["requests"] == 0
    resp = requests.post(router.url + "/v2/models/iris/versions/v9/infer", json=iris_request(), timeout=5)
    assert resp.status_code == 404 and "v9" in resp.json()["error"]
    assert "v9" not in stats(router)["versions"]


def test_a_slow_shadow_times_out_as_the_shadows_never_as_the_candidates_errors(
    procs: Procs, servers: dict[str, ProcessRecord]
) -> None:
    v1, slow = servers["v1"], servers["slow"]
    record = procs.router(shadow_timeout_s=0.2)
    put_config(record, **split(v1, slow, weight=0, mirror=100))

    results = traffic.run(record.url + INFER, n=4, concurrency=2)

    assert [r.status for r in results] == [200] * 4
    wait_for(lambda: stats(record)["versions"]["v2"]["kinds"]["shadow"]["timeouts"] == 4, "4 shadow timeouts")
    candidate = stats(record)["versions"]["v2"]
    assert candidate["requests"] == 0 and candidate["errors"] == 0  # nothing live, nothing counted against it
    assert candidate["mirror"]["skipped"] == 4 and candidate["mirror"]["error"] == 0
    metrics = requests.get(record.url + "/metrics", timeout=5).text
    assert 'rollout_router_shadow_timeouts_total{model="iris",version="v2"} 4.0' in metrics
    assert 'version="v2"} ' not in metrics.split("rollout_router_requests_total")[1].split("# HELP")[0]


def test_local_status_prints_the_rest_and_grpc_endpoints(local_home: Path, iris_models: dict[str, Path]) -> None:
    from rollout.platforms.local.platform import LocalPlatform, list_local
    from rollout.cli.report import local_text

    platform = LocalPlatform("iris", local_home, server="builtin", ready_timeout_s=30)
    platform.deploy(ModelVersion("iris", "v1", str(iris_models["good"])))

    [row] = list_local(local_home)
    text = local_text(row)

    assert f"REST {platform.endpoint()}" in text and f"gRPC {platform.grpc_endpoint()}" in text
    # platform.data_plane auto: nginx where it is installed, and status says which
    expected = "python" if nginx_front.missing() else "nginx"
    assert f"({expected})" in text
    if expected == "nginx":  # and which nginx serves the ports
        pid = nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris")))
        assert pid is not None and f"nginx   pid {pid} serves the router's ports" in text, text
    assert requests.get(platform.endpoint() + "/router/stats", timeout=5).json()["data_plane"] == expected
    config = requests.get(platform.endpoint() + "/router/config", timeout=5).json()
    assert set(config["grpc_backends"]) == {"v1"}
