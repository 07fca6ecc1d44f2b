"""LocalPlatform end to end: real server and router processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from rollout.demo.models import iris_request
from rollout.errors import BadInput, DeployError, PlatformError
from rollout.platforms.base import Traffic
from rollout.demo import traffic
from rollout.platforms.local import LocalPlatform, list_local
from rollout.platforms.local import supervisor as sv
from rollout.registry.base import ModelVersion
from tests.waiting import wait_for

INFER = "/v2/models/iris/infer"
Version = Callable[..., ModelVersion]


@pytest.fixture
def platform(local_home: Path) -> Iterator[LocalPlatform]:
    p = LocalPlatform("iris", local_home, ready_timeout_s=20, drain_timeout_s=10)
    yield p
    p.down()




def processes_with_arg(arg: str) -> list[int]:
    """Pids whose command line contains ``arg`` exactly (to find strays)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if arg.encode() in argv and sv.pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def test_first_deploy_becomes_stable_and_a_repeat_deploy_is_a_no_op(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    pid = sv.read_record(sv.version_record_path(platform.home, "iris", "v1")).pid  # type: ignore[union-attr]

    platform.deploy(iris_version("v1"))

    assert platform.get_traffic() == Traffic(stable="v1", candidate=None, weight=0, mirror=0)
    assert sv.read_record(sv.version_record_path(platform.home, "iris", "v1")).pid == pid  # type: ignore[union-attr]
    assert platform.running_versions() == ["v1"]
    assert platform.health("v1").ready
    assert platform.preview_endpoint() is None
    answer = requests.post(platform.endpoint() + INFER, json=iris_request(), timeout=5).json()  # type: ignore[operator]
    assert answer["model_version"] == "v1" and answer["outputs"][0]["name"] == "predict"


def test_set_traffic_splits_and_reads_back(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "other"))
    assert platform.get_traffic() == Traffic("v1")  # deploying a candidate routes nothing to it

    platform.set_traffic(Traffic("v1", "v2", weight=50, mirror=10))

    assert platform.get_traffic() == Traffic("v1", "v2", 50, 10)
    assert platform.capabilities().mirror and platform.capabilities().exact_weights
    results = traffic.run(platform.endpoint() + INFER, n=200, concurrency=8)  # type: ignore[operator]
    assert {r.version for r in results} == {"v1", "v2"}
    preview = requests.post(platform.preview_endpoint() + INFER, json=iris_request(), timeout=5)  # type: ignore[operator]
    assert preview.json()["model_version"] == "v2"


def test_set_traffic_refuses_versions_that_do_not_run_and_bad_weights(
    platform: LocalPlatform, iris_version: Version
) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "other"))

    with pytest.raises(PlatformError, match="v9 .*deploy it first"):
        platform.set_traffic(Traffic("v1", "v9", weight=10))
    with pytest.raises(BadInput, match="weight"):
        platform.set_traffic(Traffic("v1", "v2", weight=150))

    assert platform.get_traffic() == Traffic("v1")


def test_deploy_that_never_becomes_ready_times_out_and_leaves_stable_untouched(
    platform: LocalPlatform, iris_version: Version
) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "other"))
    platform.set_traffic(Traffic("v1", "v2", weight=20))
    hanging = LocalPlatform("iris", platform.home, server="sleep 987.25", ready_timeout_s=1)

    with pytest.raises(DeployError, match=r"iris:v3 .*within 1s") as err:
        hanging.deploy(iris_version("v3"))

    assert "sleep 987.25" in str(err.value)  # the log tail names what ran
    assert processes_with_arg("987.25") == []
    assert platform.get_traffic() == Traffic("v1", "v2", weight=20)
    assert platform.running_versions() == ["v1", "v2"]
    assert not platform.health("v3").ready
    assert requests.post(platform.endpoint() + INFER, json=iris_request(), timeout=5).status_code == 200  # type: ignore[operator]


def test_server_that_exits_early_fails_the_deploy_with_its_log(platform: LocalPlatform, iris_version: Version) -> None:
    crashing = LocalPlatform(
        "iris", platform.home, server=f"{sys.executable} -c \"print('cannot load model'); raise SystemExit(3)\"",
        ready_timeout_s=20,
    )

    with pytest.raises(DeployError, match=r"iris:v1 .*exited with code 3") as err:
        crashing.deploy(iris_version("v1"))

    assert "cannot load model" in str(err.value)
    assert platform.get_traffic() is None and platform.endpoint() is None


def test_killed_server_shows_unhealthy_and_deploy_restarts_it(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    record = sv.read_record(sv.version_record_path(platform.home, "iris", "v1"))
    assert record is not None

    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not sv.is_alive(record), "v1 to die")

    health = platform.health("v1")
    assert not health.ready and "gone" in health.detail
    assert platform.running_versions() == []

    platform.deploy(iris_version("v1"))

    assert platform.health("v1").ready
    assert requests.post(platform.endpoint() + INFER, json=iris_request(), timeout=5).status_code == 200  # type: ignore[operator]


def test_retire_drains_in_flight_requests_before_stopping(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "slow"))  # every predict takes 1.5 s
    platform.set_traffic(Traffic("v1", "v2", weight=100))
    answers: list[requests.Response] = []

    def call() -> None:
        answers.append(requests.post(platform.endpoint() + INFER, json=iris_request(), timeout=30))  # type: ignore[operator]

    callers = [threading.Thread(target=call) for _ in range(4)]
    for t in callers:
        t.start()
    wait_for(lambda: platform.stats(5)["versions"].get("v2", {}).get("inflight") == 4, "4 requests in flight on v2")

    platform.retire("v2")

    for t in callers:
        t.join()
    assert [(a.status_code, a.json()["model_version"]) for a in answers] == [(200, "v2")] * 4
    assert platform.running_versions() == ["v1"]
    assert platform.get_traffic() == Traffic("v1")
    assert not platform.health("v2").ready


def test_retire_refuses_the_stable_version_and_ignores_unknown_ones(
    platform: LocalPlatform, iris_version: Version
) -> None:
    platform.deploy(iris_version("v1"))

    with pytest.raises(PlatformError, match="v1 is the stable version"):
        platform.retire("v1")
    platform.retire("v7")

    assert platform.running_versions() == ["v1"]


def test_restarted_router_keeps_its_split_and_port(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "other"))
    platform.set_traffic(Traffic("v1", "v2", weight=30, mirror=50))
    endpoint = platform.endpoint()
    router = sv.read_record(sv.router_record_path(platform.home, "iris"))
    assert router is not None

    os.killpg(router.pid, signal.SIGKILL)
    wait_for(lambda: not sv.is_alive(router), "router to die")
    assert platform.endpoint() is None and not platform.router_health().ready
    assert "is gone" in platform.router_health().detail
    # The platform's own view while the router is dead: the split it saved last (abort, rollback and
    # adoption read it when the rollout state is gone)
    assert platform.get_traffic() == Traffic("v1", "v2", 30, 50)

    platform.deploy(iris_version("v1"))  # a later CLI run: servers are fine, router comes back

    assert platform.endpoint() == endpoint and platform.router_health().ready
    assert platform.get_traffic() == Traffic("v1", "v2", 30, 50)


def test_down_stops_everything_and_list_local_describes_it(platform: LocalPlatform, iris_version: Version) -> None:
    platform.deploy(iris_version("v1"))
    platform.deploy(iris_version("v2", "other"))
    platform.set_traffic(Traffic("v1", "v2", weight=10))

    [status] = list_local(platform.home)
    assert status.model == "iris" and status.router is not None and status.router.alive
    assert status.traffic == Traffic("v1", "v2", 10)
    assert [(s.record.version, s.alive) for s in status.servers] == [("v1", True), ("v2", True)]
    pids = [s.record.pid for s in status.servers] + [status.router.record.pid]

    platform.down()

    assert list_local(platform.home) == []
    assert not any(sv.pid_alive(pid) for pid in pids)
    assert platform.get_traffic() is None and platform.running_versions() == []


@pytest.mark.mlserver
def test_mlserver_serves_iris_through_the_router_with_metrics(local_home: Path, iris_version: Version) -> None:
    if not (Path(sys.executable).parent / "mlserver").exists():
        pytest.skip("mlserver is not installed next to this Python")
    p = LocalPlatform("iris", local_home, server="mlserver", ready_timeout_s=60)
    try:
        p.deploy(iris_version("v1"))
        p.deploy(iris_version("v2", "broken"))  # FlakyClassifier, error_rate 1.0
        p.set_traffic(Traffic("v1", "v2", weight=50))

        results = traffic.run(p.endpoint() + INFER, n=60, concurrency=4)  # type: ignore[operator]

        assert {r.status for r in results if r.version == "v1"} == {200}
        failed = [r for r in results if r.status != 200]
        assert failed and all(r.status >= 500 for r in failed)  # the bad model is a server error
        stats = p.stats(60)["versions"]
        assert stats["v1"]["errors"] == 0 and stats["v2"]["errors"] == stats["v2"]["requests"] > 0
        metrics = requests.get(p.endpoint() + "/metrics", timeout=5).text  # type: ignore[operator]
        assert 'rollout_router_requests_total{code="200",kind="live",model="iris",version="v1"}' in metrics
        assert 'rollout_router_request_duration_seconds_bucket{le="0.001",model="iris",version="v1"}' in metrics
        record = sv.read_record(sv.version_record_path(local_home, "iris", "v1"))
        assert record is not None and record.kind == "mlserver"
        mlserver_metrics = requests.get(f"http://127.0.0.1:{record.extra_ports['metrics']}/metrics", timeout=5).text
        assert "model_infer_request_success_total" in mlserver_metrics
    finally:
        p.down()
