"""The nginx data plane's own promises, beyond what the protocol suite checks on both
planes: it outlives a killed router and is adopted by the next, its requests in flight hold a retire, its records reach
the statistics, and it is refused by name where it cannot run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import numpy as np
import psutil
import pytest
import requests

from rollout.demo.models import iris_request
from rollout.errors import BadInput
from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.platform import resolve_data_plane
from rollout.platforms.local.router import DEFAULT_BODY_LIMIT_BYTES, Router, keep_front
from rollout.platforms.local.router_control import port_free
from rollout.platforms.local.routing import RouterConfig
from rollout.platforms.local.supervisor import ProcessRecord
from rollout.registry.base import ModelVersion
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
needs_nginx = pytest.mark.skipif(nginx_front.missing() is not None, reason=f"{nginx_front.missing()}")
INFER = "/v2/models/iris/infer"


@pytest.fixture
def started(local_home: Path) -> Iterator[list[ProcessRecord]]:
    records: list[ProcessRecord] = []
    yield records
    for record in records:
        sv.stop(record, 2.0)


def one_version_behind_nginx(home: Path, model_dir: Path, started: list[ProcessRecord]) -> ProcessRecord:
    """v1 of iris on the builtin server, behind a router on the nginx plane; the router."""
    server = sv.start_server(home, ModelVersion("iris", "v1", str(model_dir)), sv.BUILTIN, 30)
    started.append(server)
    router = sv.start_router(home, "iris", 0, options={"data_plane": "nginx"})
    started.append(router)
    requests.put(router.url + "/router/config", json={"backends": {"v1": server.url}, "stable": "v1"},
                 timeout=5).raise_for_status()
    return router


def nginx_pids(router_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(router_pid).children(recursive=True)
            if p.name() == "nginx" and p.status() != psutil.STATUS_ZOMBIE]


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def front_prefix(home: Path) -> Path:
    return nginx_front.prefix_for(sv.router_state_path(home, "iris"))


def kill_router(router: ProcessRecord) -> None:
    """kill -9 of the router process alone (its nginx is not in its process group)."""
    os.kill(router.pid, signal.SIGKILL)
    wait_for(lambda: gone(router.pid), "the router to die", timeout_s=15)


def next_routers_counts(home: Path, router: ProcessRecord, started: list[ProcessRecord]) -> dict[str, Any]:
    """Start the router again on the same ports; the per-version counts it reports."""
    again = sv.start_router(home, "iris", router.port, grpc_port=router.extra_ports.get("grpc"),
                            options={"data_plane": "nginx"})
    started.append(again)
    return dict(requests.get(again.url + "/router/stats", timeout=5).json()["versions"])


@needs_nginx
def test_a_killed_router_leaves_nginx_serving_its_split_and_the_next_router_adopts_it(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """The data plane outlives its control plane: no inference request is refused while
    no router runs, and what nginx served meanwhile is counted by the next router."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    [master] = [p for p in nginx_pids(router.pid) if psutil.Process(p).ppid() == router.pid]

    kill_router(router)

    alone = [requests.post(router.url + INFER, json=iris_request(), timeout=10) for _ in range(5)]
    assert [(r.status_code, r.headers.get("x-rollout-version")) for r in alone] == [(200, "v1")] * 5
    health = requests.get(router.url + "/v2/health/ready", timeout=10)  # needs the Python router
    assert health.status_code == 502 and "error" in health.json()

    again = sv.start_router(local_home, "iris", router.port, options={"data_plane": "nginx"})
    started.append(again)

    assert nginx_front.running_pid(front_prefix(local_home)) == master  # adopted, not replaced
    counted = requests.get(again.url + "/router/stats", timeout=5).json()
    assert counted["versions"]["v1"]["requests"] >= 5, counted
    assert requests.get(again.url + "/v2/health/ready", timeout=10).status_code == 200
    resp = requests.post(again.url + INFER, json=iris_request(), timeout=10)
    assert resp.status_code == 200 and resp.headers["x-rollout-version"] == "v1"

    sv.stop(again, 5.0)  # a router stopped on purpose takes its nginx with it
    assert gone(master) and nginx_front.running_pid(front_prefix(local_home)) is None
    assert port_free(router.port)


@needs_nginx
def test_while_no_router_runs_live_traffic_it_would_mirror_is_served_unmirrored(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """Mirrored traffic goes through the router process (it compares the answers); with
    that process gone, the live request is still answered by the split, without its
    shadow copy, instead of a 502."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    v1 = started[0]  # the stable server one_version_behind_nginx started
    v2 = sv.start_server(local_home, ModelVersion("iris", "v2", str(iris_models["other"])), sv.BUILTIN, 30)
    started.append(v2)
    requests.put(router.url + "/router/config", timeout=5, json={
        "backends": {"v1": v1.url, "v2": v2.url}, "stable": "v1", "candidate": "v2", "weight": 0, "mirror": 100,
    }).raise_for_status()
    kill_router(router)

    alone = [requests.post(router.url + INFER, json=iris_request(), timeout=10) for _ in range(5)]

    assert [(r.status_code, r.headers.get("x-rollout-version")) for r in alone] == [(200, "v1")] * 5, \
        [(r.text, dict(r.headers)) for r in alone[:1]] + [(front_prefix(local_home) / "error.log").read_text()[-3000:]]
    assert all(r.json()["outputs"] for r in alone)
    health = requests.get(router.url + "/v2/health/ready", timeout=10)
    assert health.status_code == 502 and health.json() == {"error": "the router process is not answering"}
    counted = next_routers_counts(local_home, router, started)
    assert counted["v1"]["requests"] == 5 and counted.get("v2", {}).get("requests", 0) == 0, counted


@needs_nginx
def test_while_no_router_runs_grpc_traffic_it_would_mirror_is_served_unmirrored(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """As on REST: a mirrored gRPC ModelInfer is still answered by the split when the
    router process is gone; what needs that process gets UNAVAILABLE."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    servers = {}
    for version, kind in (("v1", "good"), ("v2", "other")):
        servers[version] = sv.start_server(local_home, ModelVersion("iris", version, str(iris_models[kind])),
                                           sv.BUILTIN, 30)
        started.append(servers[version])
    router = sv.start_router(local_home, "iris", 0, grpc_port=0, options={"data_plane": "nginx"})
    started.append(router)
    requests.put(router.url + "/router/config", timeout=5, json={
        "backends": {v: r.url for v, r in servers.items()},
        "grpc_backends": {v: f"127.0.0.1:{r.extra_ports['grpc']}" for v, r in servers.items()},
        "stable": "v1", "candidate": "v2", "weight": 0, "mirror": 100,
    }).raise_for_status()
    kill_router(router)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float64)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.extra_ports['grpc']}")
    try:
        inp = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
        inp.set_data_from_numpy(rows)
        answers = [client.infer("iris", [inp]).get_response(as_json=True) for _ in range(5)]
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("iris")  # needs the Python router
    finally:
        client.close()

    assert [a["model_version"] for a in answers] == ["v1"] * 5
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    counted = next_routers_counts(local_home, router, started)
    assert counted["v1"]["requests"] == 5 and counted.get("v2", {}).get("requests", 0) == 0, counted


@needs_nginx
def test_an_nginx_left_with_other_limits_is_replaced_not_adopted(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """Adopting serves exactly what this router would start, or nothing: a router started
    with another body limit (its nginx.conf differs) replaces the nginx it finds."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    [master] = [p for p in nginx_pids(router.pid) if psutil.Process(p).ppid() == router.pid]
    kill_router(router)

    again = sv.start_router(local_home, "iris", router.port, options={"data_plane": "nginx",
                                                                       "body_limit_bytes": 1000})
    started.append(again)

    assert gone(master)
    assert nginx_front.running_pid(front_prefix(local_home)) not in (None, master)
    big = requests.post(again.url + INFER, data=b"x" * 2000, timeout=10)
    assert big.status_code == 413  # the new limit is the one in force
    resp = requests.post(again.url + INFER, json=iris_request(), timeout=10)
    assert resp.status_code == 200 and resp.headers["x-rollout-version"] == "v1"


@needs_nginx
@pytest.mark.parametrize("how", ["its record", "local down"])
def test_stopping_a_dead_router_stops_the_nginx_it_left_running(
    how: str, local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """After the router was killed, stopping it by its record or `rollout local down`
    (which also finds processes by marker, and nginx carries none) stops its nginx:
    nothing keeps holding its port."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    [master] = [p for p in nginx_pids(router.pid) if psutil.Process(p).ppid() == router.pid]
    kill_router(router)
    assert not gone(master)

    if how == "its record":
        sv.stop(router, 5.0)
    else:
        sv.stop_model(local_home, "iris", 5.0)

    wait_for(lambda: gone(master), "the nginx it left to stop", timeout_s=15)
    assert port_free(router.port)


@needs_nginx
def test_only_the_nginx_master_of_exactly_this_prefix_is_taken_for_the_router_s(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """A process that merely names the prefix (a `tail -f` of its error log), an nginx
    of a prefix this one is the start of, or a pid file that points elsewhere or is gone:
    none is taken for the router's nginx, which is still found, stopped or adopted, and
    none of the others is ever signalled."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    [master] = [p for p in nginx_pids(router.pid) if psutil.Process(p).ppid() == router.pid]
    prefix = front_prefix(local_home)
    tail = subprocess.Popen(["tail", "-f", str(prefix / "error.log")], stdout=subprocess.DEVNULL)
    try:
        kill_router(router)
        for _ in range(3):
            requests.post(router.url + INFER, json=iris_request(), timeout=10).raise_for_status()
        (prefix / "nginx.pid").write_text(f"{tail.pid}\n")  # wrong
        assert nginx_front.running_pid(prefix) == master
        assert nginx_front.running_pid(Path(str(prefix)[:-2])) is None  # ".../router.ngin"
        (prefix / "nginx.pid").unlink()  # gone
        assert nginx_front.running_pid(prefix) == master

        counted = next_routers_counts(local_home, router, started)  # same port: adopted, not moved

        assert nginx_front.running_pid(prefix) == master and counted["v1"]["requests"] >= 3, counted
        assert requests.post(router.url + INFER, json=iris_request(), timeout=10).status_code == 200
        sv.stop_model(local_home, "iris", 5.0)
        wait_for(lambda: gone(master), "the nginx to stop", timeout_s=15)
        assert tail.poll() is None  # never taken for nginx
    finally:
        tail.kill()
        tail.wait(5)


@needs_nginx
def test_the_files_that_hold_the_front_s_token_are_the_owner_s_alone(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """nginx.conf and front.json carry the token that passes a request to the Python
    router as nginx's own; an adopting router makes them private again if they are not."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    prefix = front_prefix(local_home)
    token = json.loads((prefix / "front.json").read_text())["token"]
    holders = [f for f in prefix.rglob("*") if f.is_file() and token in f.read_text(errors="replace")]
    assert sorted(f.name for f in holders) == ["front.json", "nginx.conf"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in holders)
    kill_router(router)
    for f in holders:
        f.chmod(0o644)  # as an older router wrote them

    next_routers_counts(local_home, router, started)

    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in holders)


@needs_nginx
def test_nginx_s_admin_server_answers_only_its_router_and_refuses_a_split_it_cannot_route(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """Another process on the machine can neither blank the split (every inference would
    then fail) nor take the records the analysis counts; the router itself cannot push a
    config nginx could not route by."""
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    saved = json.loads((front_prefix(local_home) / "front.json").read_text())
    admin = f"http://127.0.0.1:{saved['admin_port']}"
    mine = {nginx_front.NginxFront.ADMIN_TOKEN_HEADER: saved["token"]}

    for method, path in (("PUT", "/config"), ("GET", "/drain")):
        for headers in ({}, {nginx_front.NginxFront.ADMIN_TOKEN_HEADER: "guess"}):
            resp = requests.request(method, admin + path, data="{}", headers=headers, timeout=5)
            assert resp.status_code == 403 and "only the router" in resp.json()["error"], (method, path, resp.text)
    bad = {"{}": "weight", "[1]": "weight", "not json": "not JSON", '{"stable": 1}': "stable",
           json.dumps({"stable": "v1", "weight": 150, "mirror": 0, "rest": {}, "grpc": {}}): "weight",
           json.dumps({"stable": "v1", "weight": 0, "mirror": 0, "rest": {"v1": 5}, "grpc": {}}): "rest"}
    for body, named in bad.items():
        resp = requests.put(admin + "/config", data=body, headers=mine, timeout=5)
        assert resp.status_code == 400 and named in resp.json()["error"], (body, resp.text)

    for _ in range(3):
        resp = requests.post(router.url + INFER, json=iris_request(), timeout=10)
        assert resp.status_code == 200 and resp.headers["x-rollout-version"] == "v1"
    wait_for(lambda: requests.get(router.url + "/router/stats", timeout=5).json()["versions"]
             .get("v1", {}).get("requests", 0) >= 3, "the router to count what nginx served", timeout_s=15)


@needs_nginx
def test_a_router_on_the_python_plane_replaces_an_nginx_left_on_its_port(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    kill_router(router)

    again = sv.start_router(local_home, "iris", router.port, options={"data_plane": "python"})
    started.append(again)

    assert nginx_front.running_pid(front_prefix(local_home)) is None
    body = requests.get(again.url + "/router/stats", timeout=5).json()
    assert body["data_plane"] == "python" and body["config"]["stable"] == "v1"


@needs_nginx
def test_requests_in_flight_in_nginx_show_in_the_stats_until_answered(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """What the platform's retire waits on: a version with requests still in nginx."""
    router = one_version_behind_nginx(local_home, iris_models["slow"], started)

    def stats() -> dict[str, Any]:
        body = requests.get(router.url + "/router/stats", params={"window_s": 60}, timeout=5).json()
        assert body["data_plane"] == "nginx"
        return dict(body["versions"].get("v1") or {"inflight": 0, "requests": 0})

    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(
        requests.post(router.url + INFER, json=iris_request(), timeout=30).status_code)) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: stats()["inflight"] == 3, "3 requests in flight", timeout_s=10)
    metrics = requests.get(router.url + "/metrics", timeout=5).text
    assert 'rollout_router_inflight{model="iris",version="v1"} 3.0' in metrics
    for t in threads:
        t.join(30)
    assert codes == [200, 200, 200]
    final = stats()
    assert (final["inflight"], final["requests"], final["codes"]) == (0, 3, {"200": 3})
    assert final["latency_ms"]["p50"] >= 1000  # the model's 1.5 s, measured by nginx


def test_the_drain_format_is_read_back_field_by_field() -> None:
    meta, records = nginx_front.parse_drain(
        '{"inflight": {"v1": 2}, "dropped": 0, "gen": 3}\n'
        "v1\tlive\t200\t1.5\t\nv2\tpinned\t\t0\t\nv1\tlive\tg5\t2.25\t\nv2\tlive\t504\t60000\tt")
    assert meta["inflight"] == {"v1": 2}
    got = [(r.version, r.kind, r.code, r.grpc_status, r.latency_ms, r.timed_out) for r in records]
    assert got == [("v1", "live", 200, None, 1.5, False), ("v2", "pinned", None, None, 0.0, False),
                   ("v1", "live", None, 5, 2.25, False), ("v2", "live", 504, None, 60000.0, True)]
    # cjson writes an empty table as {}: no versions in flight
    assert nginx_front.parse_drain('{"inflight": {}, "dropped": 0}')[0]["inflight"] == {}


def test_only_plain_http_backends_are_served_by_nginx() -> None:
    config = RouterConfig(backends={"v1": "http://127.0.0.1:9001", "v2": "http://127.0.0.1:9002/prefix",
                                    "v3": "https://127.0.0.1:9003"},
                          grpc_backends={"v1": "127.0.0.1:9101"}, stable="v1", candidate="v2", weight=30)
    fast = nginx_front.fast_config(config)
    assert fast["rest"] == {"v1": "127.0.0.1:9001"}  # v2, v3: through the Python router
    assert (fast["stable"], fast["candidate"], fast["weight"], fast["grpc"]) == ("v1", "v2", 30,
                                                                               {"v1": "127.0.0.1:9101"})


def test_nginx_where_it_is_not_installed_is_refused_naming_the_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nginx on this PATH
    with pytest.raises(BadInput) as err:
        resolve_data_plane("nginx")
    assert "nginx is not installed" in str(err.value) and "libnginx-mod-http-lua" in str(err.value)
    assert resolve_data_plane("auto") == "python"
    assert resolve_data_plane("python") == "python"
    with pytest.raises(BadInput, match="platform.data_plane must be auto, nginx or python"):
        resolve_data_plane("envoy")


@needs_nginx
def test_a_body_nginx_keeps_on_disk_passes_from_a_private_state_home(
    tmp_path: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """Bodies over 1 MiB go through a temporary file in the state home; a home only its
    owner may enter (~/.local under a 0700 home) must still work, so nginx's workers run
    as the router's user, not nobody."""
    home = tmp_path / "private"
    home.mkdir(mode=0o700)
    router = one_version_behind_nginx(home, iris_models["good"], started)
    rows = [[5.1, 3.5, 1.4, 0.2]] * 60000  # ~1.3 MB of JSON
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
    resp = requests.post(router.url + INFER, json=body, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["outputs"][0]["data"]) == len(rows)


@needs_nginx
def test_a_killed_nginx_is_started_again_by_its_router_with_the_same_split(
    local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    router = one_version_behind_nginx(local_home, iris_models["good"], started)
    old = nginx_pids(router.pid)
    [master] = [p for p in old if psutil.Process(p).ppid() == router.pid]

    os.kill(master, signal.SIGKILL)

    last: list[str] = []

    def serving_again() -> bool:
        try:
            resp = requests.post(router.url + INFER, json=iris_request(), timeout=5)
        except requests.RequestException as exc:
            last[:] = [repr(exc)]
            return False
        last[:] = [f"{resp.status_code} {dict(resp.headers)} {resp.text[:200]}"]
        return resp.status_code == 200 and resp.headers.get("x-rollout-version") == "v1"

    # Its workers go with it (else they would hold the ports with a config nobody can
    # change), and the router starts a new nginx on the same port.
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in old), "the killed nginx's workers to exit", timeout_s=15)
    try:
        wait_for(serving_again, "the router's nginx to serve again", timeout_s=20)
    except AssertionError as exc:
        log = Path(router.log_file).read_text(errors="replace")[-4000:]
        raise AssertionError(f"{exc}; last answer: {last}; router log:\n{log}") from None
    assert not set(old) & set(nginx_pids(router.pid))
    body = requests.get(router.url + "/router/stats", timeout=5).json()
    assert body["data_plane"] == "nginx" and body["config"]["stable"] == "v1"
    said = Path(router.log_file).read_text(errors="replace")
    assert "nginx front died (killed by SIGKILL; nothing in its error log); starting it again" in said, said[-2000:]


@needs_nginx
def test_the_keeper_gives_its_split_to_an_nginx_that_has_none_and_outlives_a_failed_round(
    tmp_path: Path, local_home: Path, iris_models: dict[str, Path], started: list[ProcessRecord]
) -> None:
    """A restarted nginx whose split was never pushed (the push failed) is given it on a
    later round, and one round that raises does not end the keeper: without it nobody
    restarts nginx or counts what it serves. (The private Python port is closed here, so
    a 200 can only come from nginx serving the split itself.)"""
    server = sv.start_server(local_home, ModelVersion("iris", "v1", str(iris_models["good"])), sv.BUILTIN, 30)
    started.append(server)
    router = Router("iris", tmp_path / "router.json")
    router.config = RouterConfig(backends={"v1": server.url}, stable="v1")
    front = nginx_front.NginxFront(tmp_path / "front", port=sv.free_port(), grpc_port=None, admin_port=sv.free_port(),
                                   python_port=sv.free_port(), python_grpc_port=None, backend_timeout_s=10,
                                   body_limit_bytes=DEFAULT_BODY_LIMIT_BYTES)
    router.front = front
    url = f"http://127.0.0.1:{front.port}{INFER}"
    real_drain, failures = router.drain_front, [RuntimeError("one bad round")]

    async def drain_failing_once() -> bool:
        if failures:
            raise failures.pop()
        return await real_drain()

    router.drain_front = drain_failing_once  # type: ignore[method-assign]

    async def scenario() -> requests.Response:
        async with aiohttp.ClientSession() as session:
            router.session = session
            front.start()  # as after a restart whose push failed: nginx with no split
            keeper = asyncio.get_running_loop().create_task(keep_front(router, front, every_s=0.05))
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        resp = await asyncio.to_thread(requests.post, url, json=iris_request(), timeout=5)
                        if resp.status_code == 200 or time.monotonic() > deadline:
                            return resp
                    except requests.ConnectionError:
                        if time.monotonic() > deadline:
                            raise
                    await asyncio.sleep(0.1)
            finally:
                keeper.cancel()
                front.stop()

    resp = asyncio.run(scenario())

    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["x-rollout-version"] == "v1"
    assert failures == []  # the failing round did happen, before nginx got its split
