"""The CLI as an operator or a CI job uses it: exit codes, crash and resume, the lock,
promote / abort / rollback, and every bad input refused with a message naming it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from rollout.demo.models import iris_request
from rollout.demo.traffic import LoadGenerator
from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.platform import LocalPlatform
from rollout.state import CONTROLLER_COMMAND, FileStateStore, holder_identity

from tests.waiting import wait_for

NO_METRICS = {"metrics": []}
SLOW_ANALYSIS = {
    "interval_s": 0.5, "duration_s": 4,
    "metrics": [{"name": "error-rate", "query": "error_rate",
                 # lifecycle, not statistics: a handful of requests on purpose (min_requests: 0)
                 "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}],
}


def state(home: Path):
    return FileStateStore(home).load("iris")


@pytest.fixture
def serving_v1(cli, make_spec, local_home):
    """iris:v1 deployed as stable, with live traffic flowing through the router."""
    result = cli("start", "iris:v1", "-f", str(make_spec()))
    assert result.returncode == 0, result.stderr
    platform = LocalPlatform("iris", local_home)
    load = LoadGenerator(f"{platform.endpoint()}/v2/models/iris/infer", rate_per_s=60, workers=3).start()
    yield platform, load
    load.stop()


def test_kill_9_mid_step_then_rerun_resumes_at_the_same_step(cli, cli_background, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "weights": [30, 60]}, analysis=SLOW_ANALYSIS)
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    wait_for(lambda: (r := state(local_home).rollout) and r.step_index == 1 and len(r.step_measurements()) >= 2,
             what="the first analysis step to be measuring", timeout_s=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = state(local_home).rollout
    assert before.phase.value == "Progressing" and before.step_index == 1

    # The operator edits the spec before rerunning (a metric renamed): the rollout that is
    # under way keeps the spec it started with, and says so.
    edited = make_spec(strategy={"type": "canary", "weights": [30, 60]},
                       analysis={**SLOW_ANALYSIS, "metrics": [{**SLOW_ANALYSIS["metrics"][0], "name": "errors"}]})
    result = cli("start", "iris:v2", "-f", str(edited))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming v2 at step 2/" in result.stdout  # numbered as the steps print ("step 2/6: ...")
    assert "differs from the one this rollout started with" in result.stdout
    after = state(local_home).history[0]
    assert after.id == before.id and after.phase.value == "Promoted"
    started = [e.step_index for e in after.events if e.kind == "step"]
    assert started.count(0) == 1, "the traffic step before the crash was redone"
    assert started.count(1) == 1, "the interrupted analysis restarted instead of resuming"
    kept = [m for m in after.measurements if m.step_index == 1 and m.at <= before.measurements[-1].at]
    assert len(kept) == len(before.step_measurements()), "measurements from before the crash were lost"
    assert all(s.status == 200 for s in load.snapshot()), "callers saw errors while the CLI was dead"


def test_a_start_that_meets_a_controller_pass_waits_for_the_pass_then_starts(cli, make_spec, local_home, serving_v1):
    """A controller holds a model's lock for one reconcile pass. CI saw `rollout start
    --detach` meet such a pass and exit 5; the start now waits the pass out."""
    import threading

    passing, started = threading.Event(), time.monotonic()

    def controller_pass() -> None:
        with FileStateStore(local_home).lock("iris", holder_identity(CONTROLLER_COMMAND)):
            passing.set()
            time.sleep(3)

    held = threading.Thread(target=controller_pass, daemon=True)
    held.start()
    assert passing.wait(timeout=10)

    result = cli("start", "iris:v2", "-f", str(make_spec()), "--detach")

    held.join(timeout=10)
    assert result.returncode == 0, result.stderr
    assert "iris:v2 Progressing at step" in result.stdout, result.stdout
    assert "no controller runs for this home: `rollout controller --daemon` carries it on" in result.stdout
    assert time.monotonic() - started >= 3, "the start did not wait for the pass"


def test_second_start_is_refused_with_exit_5_naming_the_holder_and_abort_reaches_it(
        cli, cli_background, make_spec, local_home, serving_v1):
    platform, _ = serving_v1
    spec = make_spec(strategy={"type": "canary", "weights": [50]}, analysis={**SLOW_ANALYSIS, "duration_s": 60})
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    wait_for(lambda: (r := state(local_home).rollout) and r.step_index == 1, what="the rollout to be analysing")

    second = cli("start", "iris:v2", "-f", str(spec))
    assert second.returncode == 5
    assert f"locked by pid {proc.pid}" in second.stderr and "`rollout start`" in second.stderr

    aborted = cli("abort", "iris")
    assert aborted.returncode == 0, aborted.stderr
    assert proc.wait(timeout=30) == 3
    r = state(local_home).history[0]
    assert r.phase.value == "Aborted" and "aborted by" in r.reason
    assert platform.get_traffic().weight == 0
    assert "v2" in platform.running_versions(), "abort keeps the candidate for inspection"


def test_manual_pause_exits_4_then_promote_finishes_and_other_versions_wait(cli, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}, analysis=NO_METRICS)
    paused = cli("start", "iris:v2", "-f", str(spec))
    assert paused.returncode == 4
    assert "waiting for `rollout promote iris:v2`" in paused.stdout
    assert json.loads(cli("status", "iris", "-o", "json").stdout)["rollout"]["phase"] == "Paused"

    again = cli("start", "iris:v2", "-f", str(spec))
    assert again.returncode == 4, "rerunning start must not skip a manual pause"
    other = cli("start", "iris:v4", "-f", str(spec))
    assert other.returncode == 5 and "rollout of iris:v2 is paused" in other.stderr and "--supersede" in other.stderr

    promoted = cli("promote", "iris:v2")
    assert promoted.returncode == 0, promoted.stderr
    status = json.loads(cli("status", "iris", "-o", "json").stdout)
    assert status["stable"] == "v2" and status["rollout"]["phase"] == "Promoted"


def test_supersede_aborts_the_paused_rollout_and_starts_the_new_one(cli, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    go = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 0}, analysis=NO_METRICS)
    result = cli("start", "iris:v4", "-f", str(go), "--supersede")
    assert result.returncode == 0, result.stderr
    ms = state(local_home)
    assert ms.stable.version == "v4"
    superseded = next(h for h in ms.history if h.candidate.version == "v2")
    assert superseded.phase.value == "Aborted" and "superseded by v4" in superseded.reason


def test_promote_full_skips_remaining_steps(cli, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 10}, {"pause": {}}, {"set_weight": 30},
                                                           {"pause": {}}]}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    result = cli("promote", "iris:v2", "--full")
    assert result.returncode == 0, result.stderr
    r = state(local_home).history[0]
    assert r.phase.value == "Promoted"
    assert not any(e.kind == "step" and e.step_index in (2, 3) for e in r.events)


def test_rollback_after_promotion_switches_back_without_restarting_the_old_version(
        cli, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 600}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 0
    v1_pid = _pid(local_home, "v1")

    result = cli("rollback", "iris")

    assert result.returncode == 0, result.stderr
    assert "100% of traffic on v1" in result.stdout
    assert _pid(local_home, "v1") == v1_pid, "v1 was restarted: the kept version was not used"
    assert platform.get_traffic().stable == "v1" and platform.running_versions() == ["v1"]
    ms = state(local_home)
    assert ms.stable.version == "v1" and ms.previous[0].version == "v2"
    mark = len(load.snapshot())
    wait_for(lambda: len(load.snapshot()) > mark + 20, what="more traffic")
    assert {s.version for s in load.snapshot()[mark:]} == {"v1"}
    assert all(s.status == 200 for s in load.snapshot())


def _pid(home: Path, version: str) -> int:
    from rollout.platforms.local import supervisor as sv

    return next(r.pid for r in sv.version_records(home, "iris") if r.version == version)


def test_rollback_only_goes_to_a_version_that_was_stable_here(cli, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 600}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 0
    for never_stable in ("v3", "v9"):
        result = cli("rollback", "iris", "--to", never_stable)
        assert result.returncode == 2
        assert f"iris:{never_stable} was never stable here" in result.stderr and "previous stable versions: v1" in result.stderr
    assert state(local_home).stable.version == "v2", "a refused rollback changed the stable version"


def test_start_of_the_stable_version_is_a_no_op_with_exit_0_even_after_a_rollback(cli, make_spec, serving_v1):
    spec = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 600}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 0
    assert cli("rollback", "iris").returncode == 0
    again = cli("start", "iris:v1", "-f", str(spec))
    assert again.returncode == 0 and "already the stable version" in again.stdout


def test_status_and_history_show_the_value_that_decided(cli, make_spec, local_home, serving_v1):
    result = cli("start", "iris:v3", "-f", str(make_spec()))
    assert result.returncode == 3
    assert "error-rate [v3] = 1: fail" in result.stdout

    status = cli("status", "iris")
    assert "RolledBack" in status.stdout and "error-rate" in status.stdout and "> max 0.05" in status.stdout
    data = json.loads(cli("status", "iris", "-o", "json").stdout)
    assert data["stable"] == "v1"
    assert any(m["metric"] == "error-rate" and m["value"] == 1.0 for m in data["rollout"]["measurements"])
    history = cli("history", "iris", "-o", "json")
    rows = json.loads(history.stdout)
    assert [r["phase"] for r in rows[:2]] == ["RolledBack", "Promoted"]
    assert "error-rate 1 > max 0.05" in rows[0]["deciding"][-1]


def test_local_status_and_down_show_and_stop_the_processes(cli, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    load.stop()
    listed = cli("local", "status")
    assert listed.returncode == 0 and "iris" in listed.stdout and "v1" in listed.stdout
    nothing = cli("local", "down", "nosuch")
    assert nothing.returncode == 0 and nothing.stdout.strip() == f"no local processes of nosuch under {local_home}"
    down = cli("local", "down", "iris")
    assert down.returncode == 0 and down.stdout.strip() == "stopped iris"
    assert LocalPlatform("iris", local_home).running_versions() == []
    assert LocalPlatform("iris", local_home).endpoint() is None


def test_local_status_says_when_the_old_stable_is_retired_and_what_will_retire_it(
        cli, make_spec, local_home, serving_v1):
    """After a promotion the old stable keeps running for scale_down_delay_s (for a fast
    rollback). Nothing retires it on its own: status says when it is due and that the next
    `rollout start` (or a controller) does it."""
    _, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 600}, analysis=NO_METRICS)
    promoted = cli("start", "iris:v2", "-f", str(spec))
    assert promoted.returncode == 0, promoted.stderr
    load.stop()

    listed = cli("local", "status")

    assert listed.returncode == 0, listed.stderr
    v1 = next(line for line in listed.stdout.splitlines() if line.strip().startswith("v1 "))
    due = state(local_home).retirements[0].due_at
    assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(due)) in v1, v1
    assert "retirement due" in v1 and "the next `rollout start iris:...` retires it, or a controller (none runs)" in v1
    v2 = next(line for line in listed.stdout.splitlines() if line.strip().startswith("v2 "))
    assert "retire" not in v2


def test_start_of_the_stable_version_brings_it_back_after_local_down(cli, make_spec, local_home, serving_v1):
    """A model whose processes are gone (`local down`, a kill, a reboot) comes back with the
    command that first deployed it, instead of "nothing to do" while nothing serves."""
    _, load = serving_v1
    load.stop()
    assert cli("local", "down", "iris").returncode == 0

    again = cli("start", "iris:v1", "-f", str(make_spec()))

    assert again.returncode == 0, again.stderr
    assert "already the stable version, but it was not served" in again.stdout
    platform = LocalPlatform("iris", local_home)
    assert platform.running_versions() == ["v1"]
    resp = requests.post(f"{platform.endpoint()}/v2/models/iris/infer", json=iris_request(), timeout=10)
    assert resp.status_code == 200 and resp.headers["x-rollout-version"] == "v1"
    # Serving again: the next start of the stable version has nothing to do.
    assert "nothing to do" in cli("start", "iris:v1", "-f", str(make_spec())).stdout


@pytest.mark.skipif(nginx_front.missing() is not None, reason=f"{nginx_front.missing()}")
def test_a_killed_router_outside_a_rollout_leaves_nginx_serving_and_start_of_the_stable_adopts_it(
        cli, make_spec, local_home, serving_v1):
    """No rollout runs, so nothing repairs the router by itself: nginx keeps serving, status
    says so and names the command, and that command brings the router back over it."""
    platform, load = serving_v1
    router = sv.read_record(sv.router_record_path(local_home, "iris"))
    front = nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris")))
    assert router is not None and front is not None
    os.kill(router.pid, signal.SIGKILL)
    wait_for(lambda: not sv.is_alive(router), what="the router to die")
    t_kill = time.time()

    status = cli("local", "status").stdout
    assert "DEAD" in status and f"nginx   pid {front} still serves" in status, status
    assert "`rollout start iris:v1`" in status
    again = cli("start", "iris:v1", "-f", str(make_spec()))

    assert again.returncode == 0, again.stderr
    assert "already the stable version, but it was not served" in again.stdout
    assert nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris"))) == front
    assert platform.endpoint().endswith(f":{router.port}")
    mark = time.time()
    wait_for(lambda: len([s for s in load.snapshot() if s.at > mark]) > 10, what="traffic after the router is back")
    around = [s for s in load.snapshot() if s.at > t_kill - 1]
    assert around and [s for s in around if s.status != 200] == []


@pytest.mark.skipif(nginx_front.missing() is not None, reason=f"{nginx_front.missing()}")
def test_a_killed_router_during_a_paused_canary_is_brought_back_by_a_start_of_the_candidate(
        cli, make_spec, local_home, serving_v1):
    """During a rollout, the command status names is the one that resumes it (a start of
    the stable would be refused, exit 5); it brings the router back over its nginx, with
    the canary's split."""
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    router = sv.read_record(sv.router_record_path(local_home, "iris"))
    front = nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris")))
    assert router is not None and front is not None
    os.kill(router.pid, signal.SIGKILL)
    wait_for(lambda: not sv.is_alive(router), what="the router to die")

    status = cli("local", "status").stdout
    assert f"nginx   pid {front} still serves" in status and "`rollout start iris:v2`" in status, status
    again = cli("start", "iris:v2", "-f", str(spec))

    assert again.returncode == 4, again.stdout + again.stderr
    assert nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(local_home, "iris"))) == front
    traffic = LocalPlatform("iris", local_home).get_traffic()
    assert (traffic.stable, traffic.candidate, traffic.weight) == ("v1", "v2", 50)
    # All of it gone (`local down`, a reboot): status still names the rollout and the
    # command (with the home it was given), and that start brings servers, router and split back.
    assert cli("local", "down", "iris").returncode == 0
    status = cli("local", "status", "--home", str(local_home)).stdout
    assert f"its rollout of v2 is paused; `rollout start iris:v2 --home {local_home}` brings it back" in status, status
    back = cli("start", "iris:v2", "-f", str(spec))
    assert back.returncode == 4 and "put back v1 50%, v2 50%" in back.stdout, back.stdout + back.stderr
    traffic = LocalPlatform("iris", local_home).get_traffic()
    assert (traffic.stable, traffic.candidate, traffic.weight) == ("v1", "v2", 50)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, expected", [
    ("model: iris\nregistry: {type: git, url: /x\n", "malformed YAML at line"),
    ("model: iris\nregistry: {type: git, url: /x}\nstrategy: {type: rainbow}\n", "rainbow"),
    ("model: iris\nregistry: {type: git, url: /x}\nstrategy: {type: canary, weights: [10, 150]}\n",
     "weight 150 is outside 0-100"),
    ("model: Iris_Model\nregistry: {type: git, url: /x}\n", "DNS-1123"),
    ("model: iris\nregistry: {type: git, url: /x}\nplatform: {type: local, replicas: 3}\n", "platform.local.replicas"),
])
def test_lint_refuses_bad_specs_with_exit_2_naming_the_field(cli, tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    result = cli("lint", "-f", str(f))
    assert result.returncode == 2
    assert expected in result.stderr


def test_lint_prints_the_plan_of_a_good_spec(cli, make_spec):
    result = cli("lint", "-f", str(make_spec()))
    assert result.returncode == 0
    assert "1. traffic weight=30%" in result.stdout and "promote" in result.stdout
    assert "warning" not in result.stderr


def test_lint_warns_when_nothing_is_measured_before_full_traffic(cli, make_spec):
    result = cli("lint", "-f", str(make_spec(strategy={"type": "blue_green"}, analysis=NO_METRICS)))
    assert result.returncode == 0
    assert "warning: the plan reaches 100% without any analysis, pause or gate" in result.stderr


@pytest.mark.parametrize("ref, expected", [
    ("Iris:v1", "DNS-1123"),
    ("iris:v9", "iris:v9 is not in the registry; versions: v1, v2, v3, v4"),
    ("iris", "names no version"),
    ("iris:v1;rm", "version 'v1;rm' is not valid"),
    ("fraud:v1", "is for model 'iris', not 'fraud'"),
])
def test_start_refuses_bad_references_and_starts_nothing(cli, make_spec, local_home, ref, expected):
    result = cli("start", ref, "-f", str(make_spec()))
    assert result.returncode == 2
    assert expected in result.stderr
    assert not (local_home / "local").exists() or LocalPlatform("iris", local_home).running_versions() == []
    assert state(local_home).revision == 0


def test_commands_on_a_model_without_state_say_so(cli):
    status = cli("status", "iris")
    assert status.returncode == 2 and "has no state" in status.stderr
    promote = cli("promote", "iris:v2")
    assert promote.returncode == 2 and "no rollout state" in promote.stderr


def test_promote_with_nothing_in_progress_is_bad_input(cli, serving_v1):
    result = cli("promote", "iris:v2")
    assert result.returncode == 2 and "no rollout of 'iris' is in progress" in result.stderr


def _kill(home: Path, version: str) -> None:
    os.kill(_pid(home, version), signal.SIGKILL)


def test_candidate_dying_during_a_pause_is_rolled_back_not_left_with_traffic(
        cli, cli_background, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 20}},
                                                           {"set_weight": 60}]},
                     analysis={**NO_METRICS, "interval_s": 0.5})
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    wait_for(lambda: (r := state(local_home).rollout) and r.step_index == 1, what="the pause")
    _kill(local_home, "v2")
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 3, out + err
    r = state(local_home).history[0]
    assert r.phase.value == "RolledBack" and "candidate v2 stopped being ready" in r.reason
    assert platform.get_traffic().candidate is None and platform.get_traffic().stable == "v1"


def test_abort_works_when_the_stable_process_died_during_a_manual_pause(cli, make_spec, local_home, serving_v1):
    platform, load = serving_v1
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 4
    _kill(local_home, "v1")

    result = cli("abort", "iris")

    assert result.returncode == 0, result.stderr
    assert platform.health("v1").ready, "abort must bring the stable version back before sending it traffic"
    assert platform.get_traffic() .weight == 0
    mark = len(load.snapshot())
    wait_for(lambda: len(load.snapshot()) > mark + 20, what="more traffic")
    assert all(s.status == 200 and s.version == "v1" for s in load.snapshot()[mark + 5:])


def test_old_stable_is_retired_during_the_next_rollout_once_its_delay_passes(
        cli, make_spec, local_home, serving_v1):
    quick = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 1}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(quick)).returncode == 0
    assert "v1" in LocalPlatform("iris", local_home).running_versions(), "kept for instant rollback"
    paused = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration_s": 3}}]},
                       analysis={**NO_METRICS, "interval_s": 0.5})
    result = cli("start", "iris:v4", "-f", str(paused))
    assert result.returncode == 0, result.stderr
    assert "v1 retired: its scale-down delay has passed" in result.stdout
    assert "v1" not in LocalPlatform("iris", local_home).running_versions()


def test_rollback_after_the_delay_still_uses_the_warm_old_version(cli, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "weights": [50], "scale_down_delay_s": 0.5}, analysis=NO_METRICS)
    assert cli("start", "iris:v2", "-f", str(spec)).returncode == 0
    v1_pid = _pid(local_home, "v1")
    import time

    time.sleep(1.0)  # the delay has passed, but nothing retired v1 yet
    result = cli("rollback", "iris")
    assert result.returncode == 0, result.stderr
    assert _pid(local_home, "v1") == v1_pid, "rollback stopped the version it was restoring"


def test_promote_while_another_process_runs_the_rollout_exits_0_and_the_run_carries_on(
        cli, cli_background, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 60}},
                                                           {"set_weight": 60}]}, analysis=NO_METRICS)
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    wait_for(lambda: (r := state(local_home).rollout) and r.step_index == 1, what="the pause")

    result = cli("promote", "iris:v2")

    assert result.returncode == 0, result.stderr
    assert "accepted the promotion" in result.stdout
    assert proc.wait(timeout=30) == 0
    assert state(local_home).stable.version == "v2"


def test_a_bad_promote_request_is_refused_at_the_requester_and_the_run_is_unharmed(
        cli, cli_background, make_spec, local_home, serving_v1):
    spec = make_spec(strategy={"type": "shadow", "on_success": "discard"},
                     analysis={**SLOW_ANALYSIS, "duration_s": 60})
    proc = cli_background("start", "iris:v2", "-f", str(spec))
    wait_for(lambda: (r := state(local_home).rollout) and r.step_index == 1, what="the shadow analysis")

    bad = cli("promote", "iris:v2", "--full")
    assert bad.returncode == 2 and "has no promotion step" in bad.stderr
    assert state(local_home).rollout.request is None
    assert cli("abort", "iris").returncode == 0
    assert proc.wait(timeout=30) == 3
