"""Faults of what serves a canary, with real processes: the CLI, the local router, the
builtin server, live traffic. A killed stable or router is repaired by the running
rollout and never blamed on the candidate; a rollout killed inside its rollback is
continued by the rerun; a lost state file is adopted from what the router serves, and
abort / rollback work from the router alone; `status --watch` ends when the process it
follows dies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rollout.demo.models import make_bad_model
from rollout.demo.traffic import LoadGenerator
from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.platform import LocalPlatform
from rollout.platforms.base import Traffic
from rollout.registry.git import publish_version
from rollout.state import FileStateStore

from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

ERRORS = {"name": "error-rate", "query": "error_rate",
          # lifecycle, not statistics: a handful of requests on purpose (min_requests: 0)
          "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}
ANALYSIS = {"interval_s": 0.5, "duration_s": 2, "metrics": [ERRORS]}
PAUSED_CANARY = {"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 12}}, {"analysis": {}},
                                             {"set_weight": 60}]}


def state(home: Path):
    return FileStateStore(home).load("iris")


def _pid(home: Path, what: str) -> int:
    path = sv.router_record_path(home, "iris") if what == "router" else sv.version_record_path(home, "iris", what)
    return sv.read_record(path).pid


@pytest.fixture
def serving_v1(cli, make_spec, local_home):
    """iris:v1 stable, with live traffic through the router."""
    result = cli("start", "iris:v1", "-f", str(make_spec(analysis=ANALYSIS)))
    assert result.returncode == 0, result.stderr
    platform = LocalPlatform("iris", local_home)
    load = LoadGenerator(f"{platform.endpoint()}/v2/models/iris/infer", rate_per_s=40, workers=3).start()
    yield platform, load
    load.stop()


def _at_pause(home: Path) -> None:
    wait_for(lambda: (r := state(home).rollout) and r.step_index == 1 and r.step_started_at, what="the pause at 30%",
             timeout_s=120)


def test_kill_9_of_the_stable_mid_canary_is_repaired_and_the_candidate_is_still_promoted(
        cli_background, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    proc = cli_background("start", "iris:v2", "-f", str(make_spec(strategy=PAUSED_CANARY, analysis=ANALYSIS)))
    _at_pause(local_home)
    killed = _pid(local_home, "v1")
    os.kill(killed, signal.SIGKILL)
    t_kill = time.time()

    out, err = proc.communicate(timeout=180)

    assert proc.returncode == 0, out + err
    r = state(local_home).history[0]
    assert r.phase.value == "Promoted"
    repaired = [e for e in r.events if e.kind == "repaired"]
    assert repaired and "stable v1 was down" in repaired[0].message and "Not held against candidate v2" in repaired[0].message
    assert repaired[0].at > t_kill
    assert "repaired" in out and "stable v1 was down" in out
    # The router sends what the dead stable refuses to the candidate meanwhile: at most the requests
    # in flight at the kill (one per traffic worker) can fail.
    failed = [s for s in load.snapshot() if s.status != 200]
    assert len(failed) <= load.workers, failed
    late = [s for s in load.snapshot() if s.at > repaired[0].at + 1]
    assert late and all(s.status == 200 for s in late), "callers still saw errors after the stable was restarted"


def test_kill_9_of_the_router_mid_canary_restarts_it_on_the_same_port_with_the_split(
        cli_background, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    endpoint = platform.endpoint()
    proc = cli_background("start", "iris:v2", "-f", str(make_spec(strategy=PAUSED_CANARY, analysis=ANALYSIS)))
    _at_pause(local_home)
    os.killpg(_pid(local_home, "router"), signal.SIGKILL)

    repaired = wait_for(lambda: [e for e in state(local_home).rollout.events if e.kind == "repaired"],
                        what="the running rollout to restart the router", timeout_s=60)
    assert "router was down" in repaired[0].message and "v2 at 30%" in repaired[0].message
    assert platform.endpoint() == endpoint, "the router came back on another port: callers would not find it"
    assert platform.get_traffic() == Traffic("v1", "v2", 30)
    mark = time.time()
    wait_for(lambda: len([s for s in load.snapshot() if s.at > mark]) > 20, what="traffic through the new router")
    assert all(s.status == 200 for s in load.snapshot() if s.at > mark)

    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and state(local_home).history[0].phase.value == "Promoted", out + err


@pytest.mark.skipif(nginx_front.missing() is not None, reason=f"{nginx_front.missing()}")
def test_kill_9_of_the_router_process_alone_refuses_no_request_while_it_is_repaired(
        cli_background, make_spec, local_home, serving_v1):
    """On the nginx plane the data plane outlives the router: nginx keeps serving the
    split while no router runs, and the restarted router adopts it."""
    platform, load = serving_v1
    proc = cli_background("start", "iris:v2", "-f", str(make_spec(strategy=PAUSED_CANARY, analysis=ANALYSIS)))
    _at_pause(local_home)
    front = nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris")))
    assert front is not None, "the router runs no nginx front: auto should have chosen nginx here"
    t_kill = time.time()
    os.kill(_pid(local_home, "router"), signal.SIGKILL)

    repaired = wait_for(lambda: [e for e in state(local_home).rollout.events if e.kind == "repaired"],
                        what="the running rollout to restart the router", timeout_s=60)
    assert "router was down" in repaired[0].message
    assert platform.get_traffic() == Traffic("v1", "v2", 30)
    assert nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris"))) == front
    mark = time.time()
    wait_for(lambda: len([s for s in load.snapshot() if s.at > mark]) > 20, what="traffic after the repair")
    around = [s for s in load.snapshot() if s.at > t_kill - 1]
    assert around and [s for s in around if s.status != 200] == []
    assert {s.version for s in around if s.at < repaired[0].at} == {"v1", "v2"}, "the split stopped while no router ran"

    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and state(local_home).history[0].phase.value == "Promoted", out + err


def test_kill_9_inside_a_rollback_is_continued_by_the_rerun_never_re_applying_the_canary(
        cli, cli_background, make_spec, local_home, registry, tmp_path, serving_v1):
    platform, load = serving_v1
    # half its requests fail, each 1.5 s late: the rollback drains it for a while (the moment to kill)
    publish_version(registry, "iris", "v5", make_bad_model(tmp_path / "bad-slow", error_rate=0.5, extra_latency_ms=1500))
    spec = make_spec(strategy={"type": "canary", "weights": [30, 60]}, analysis=ANALYSIS)
    proc = cli_background("start", "iris:v5", "-f", str(spec))
    deadline = time.monotonic() + 120
    while (r := state(local_home).rollout) is None or r.ending is None:  # poll tightly: the window is short
        assert proc.poll() is None and time.monotonic() < deadline, "the rollback ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t_kill = time.time()
    assert state(local_home).rollout.ending is not None, "the kill did not land inside the rollback"

    rerun = cli("start", "iris:v5", "-f", str(spec))

    assert rerun.returncode == 3, rerun.stdout + rerun.stderr
    r = state(local_home).history[0]
    assert r.phase.value == "RolledBack" and "analysis failed" in r.reason
    assert not [e for e in r.events if e.kind == "step" and e.at > t_kill], "the rerun started a plan step again"
    assert platform.get_traffic() == Traffic("v1") and "v5" not in platform.running_versions()
    started = time.time()
    wait_for(lambda: len([s for s in load.snapshot() if s.at > started]) > 10, what="more traffic")
    assert all(s.version == "v1" for s in load.snapshot() if s.at > started and s.status == 200)


def _delete_state(home: Path) -> None:
    for path in (home / "state").glob("iris.json*"):
        path.unlink()


def test_a_deleted_state_file_adopts_the_served_version_and_runs_the_canary_with_analysis(
        cli, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    _delete_state(local_home)

    result = cli("start", "iris:v2", "-f", str(make_spec(strategy={"type": "canary", "weights": [30]},
                                                          analysis=ANALYSIS)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "adopted" in result.stdout and "already serves iris:v1" in result.stdout
    ms = state(local_home)
    r = ms.history[0]
    assert r.strategy == "canary" and r.stable.version == "v1" and ms.stable.version == "v2"
    assert [s.kind for s in r.steps][:2] == ["traffic", "analysis"] and r.steps[1].outcome == "passed"
    assert all(s.status == 200 for s in load.snapshot())


def test_abort_with_the_state_deleted_puts_all_traffic_on_the_stable_the_router_serves(
        cli, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]}, analysis=ANALYSIS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    _delete_state(local_home)

    result = cli("abort", "iris")  # no -f, no state: the router is the only source of truth

    assert result.returncode == 0, result.stderr
    assert "served v1 as stable and v2 at 30%" in result.stdout and "all traffic now on v1" in result.stdout
    assert platform.get_traffic() == Traffic("v1") and "v2" in platform.running_versions()
    mark = time.time()
    wait_for(lambda: len([s for s in load.snapshot() if s.at > mark + 0.5]) > 10, what="more traffic")
    assert all(s.version == "v1" for s in load.snapshot() if s.at > mark + 0.5)


def test_rollback_with_a_damaged_state_file_restores_the_stable_and_retires_the_candidate(
        cli, make_spec, local_home, serving_v1):
    platform, _ = serving_v1
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]}, analysis=ANALYSIS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    for path in (local_home / "state").glob("iris.json*"):
        path.write_text("{ truncated")

    result = cli("rollback", "iris")

    assert result.returncode == 0, result.stderr
    assert "state is damaged" in result.stdout and "v2 retired" in result.stdout
    assert platform.get_traffic() == Traffic("v1") and "v2" not in platform.running_versions()


def test_status_watch_ends_with_exit_6_when_the_start_it_follows_is_killed(
        cli, cli_background, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 600}}]},
                     analysis=ANALYSIS)
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    _at_pause(local_home)
    held = cli("status", "iris")
    assert held.returncode == 0 and f"held by   pid {proc.pid}" in held.stdout
    watch = cli_background("status", "iris", "--watch")
    assert watch.stdout.readline().startswith("model"), "the watch did not start following"

    os.kill(proc.pid, signal.SIGKILL)
    rest, err = watch.communicate(timeout=60)
    out = rest

    assert watch.returncode == 6, out + err
    assert f"the process that ran it (pid {proc.pid}" in out and "is gone" in out
    assert "`rollout start iris:v2` resumes it" in out
    status = cli("status", "iris")
    assert "held by   no process since" in status.stdout and f"pid {proc.pid}" in status.stdout
