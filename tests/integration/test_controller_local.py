"""`rollout controller` on the local platform: a detached rollout runs to promotion with
no CLI process alive, and a controller killed with kill -9 mid-rollout is replaced by a
standby that continues it. Real processes: the CLI, the controllers, the router and the
model servers."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest

from rollout.controller import leader
from rollout.platforms.local.platform import LocalPlatform
from rollout.state import FileStateStore, Phase

from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

STEPPED = {"type": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration_s": 2}}, {"set_weight": 50},
                                       {"pause": {"duration_s": 2}}]}
ANALYSIS = {"interval_s": 0.5, "duration_s": 1.5,
            "metrics": [{"name": "error-rate", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}}]}


def _state(home: Path):
    return FileStateStore(home).load("iris")


def _finished(home: Path):
    ms = _state(home)
    return ms.history[0] if ms.history and ms.history[0].candidate.version == "v2" else None


def _controller_port(proc) -> int:
    line = proc.stdout.readline()  # "controller for <home>: /metrics and /healthz on http://127.0.0.1:<port> (pid N)"
    assert "/healthz on http://127.0.0.1:" in line, line
    return int(line.split("http://127.0.0.1:")[1].split()[0])


def test_a_detached_rollout_is_carried_to_promotion_by_the_controller_daemon(cli, make_spec, local_home):
    assert cli("start", "iris:v1", "-f", str(make_spec())).returncode == 0
    spec = make_spec(strategy=STEPPED, analysis=ANALYSIS)

    started = cli("start", "iris:v2", "-f", str(spec), "--detach")

    assert started.returncode == 0, started.stderr
    assert "iris:v2 Progressing at step" in started.stdout
    status = cli("status", "iris")
    assert "held by   no process" in status.stdout, status.stdout
    daemon = cli("controller", "--daemon")
    assert daemon.returncode == 0 and "controller running in the background, pid" in daemon.stdout, daemon.stderr
    pid = int(daemon.stdout.split("pid")[-1])
    try:
        out = cli("status", "iris").stdout  # the controller leads, and holds the model only while reconciling it
        if "Progressing" in out:  # (on a slow machine it may be done already)
            assert "carried   by the controller" in out or "held by   pid" in out and "`rollout controller`" in out, out
        log = local_home / "logs" / "controller.log"
        port = int(wait_for(lambda: "/healthz on http://127.0.0.1:" in log.read_text() and log.read_text(),
                            what="the daemon's address").split("http://127.0.0.1:")[1].split()[0])
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200

        r = wait_for(lambda: _finished(local_home), what="the controller to finish the rollout", timeout_s=120)

        assert r.phase is Phase.PROMOTED and _state(local_home).stable.version == "v2"
        assert LocalPlatform("iris", local_home).get_traffic().stable == "v2"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'rollout_rollouts{phase="Promoted"} 1.0' in metrics
        assert 'rollout_decisions_total{outcome="passed"}' in metrics
        down = cli("local", "down")
        assert f"stopped the controller (pid {pid})" in down.stdout, down.stdout + down.stderr
        wait_for(lambda: leader(local_home) is None, what="the daemon to stop")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_controller_killed_mid_rollout_is_replaced_by_a_standby_that_continues(
        cli, cli_background, make_spec, local_home):
    assert cli("start", "iris:v1", "-f", str(make_spec())).returncode == 0
    first = cli_background("controller", "--port", "0")
    _controller_port(first)
    wait_for(lambda: str(first.pid) in (leader(local_home) or ""), what="the first controller to lead")
    second = cli_background("controller", "--port", "0")
    _controller_port(second)
    # long enough to be seen and killed in (polled every 0.05 s) and for the standby, which
    # retries the leader lock every 1 s, to take over with most of it left
    long_pause = {"type": "canary", "steps": [*STEPPED["steps"][:3], {"pause": {"duration_s": 8}}]}
    assert cli("start", "iris:v2", "-f", str(make_spec(strategy=long_pause, analysis=ANALYSIS)),
               "--detach").returncode == 0
    wait_for(lambda: (r := _state(local_home).rollout) and r.phase.active and r.step_index >= 3,
             what="the rollout to be in its long pause", timeout_s=90)

    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    wait_for(lambda: str(second.pid) in (leader(local_home) or ""), what="the standby to take over")
    r = wait_for(lambda: _finished(local_home), what="the standby to finish the rollout", timeout_s=120)
    assert r.phase is Phase.PROMOTED
    assert [s.outcome for s in r.steps].count("passed") == len(r.plan)
    assert LocalPlatform("iris", local_home).get_traffic().stable == "v2"


def test_platform_controller_true_starts_a_daemon_that_carries_a_detached_rollout_and_retires_on_time(
        cli, make_spec, local_home):
    """`platform: {type: local, controller: true}`: the first command that deploys starts a
    controller beside the router; after it exits, a detached rollout is promoted and the
    old version retired after scale_down_delay_s with no CLI process alive; `rollout local
    status` shows the controller and `rollout local down` stops it."""
    import psutil

    strategy = {**STEPPED, "scale_down_delay_s": 3}
    spec = make_spec(strategy=strategy, analysis=ANALYSIS, platform={"controller": True})
    assert leader(local_home) is None

    first = cli("start", "iris:v1", "-f", str(spec))

    assert first.returncode == 0, first.stderr
    lead = leader(local_home)
    assert lead is not None and "`rollout controller`" in lead, "the platform started a controller"
    pid = int((local_home / "controller.pid").read_text())
    assert f"pid {pid} " in lead
    status = cli("local", "status").stdout
    assert f"controller pid {pid} " in status and "/metrics on http://127.0.0.1:" in status, status
    try:
        started = cli("start", "iris:v2", "-f", str(spec), "--detach")
        assert started.returncode == 0 and "iris:v2 Progressing at step" in started.stdout, started.stderr
        assert "the controller for this home carries it on" in started.stdout, started.stdout
        assert cli("start", "iris:v2", "-f", str(spec), "--detach").returncode == 0  # a second start changes nothing
        assert leader(local_home) == lead, "still the one controller"

        wait_for(lambda: (r := _state(local_home).rollout or _finished(local_home)) and not r.phase.active,
                 what="the controller to end the rollout", timeout_s=120)
        r = _state(local_home).rollout or _finished(local_home)
        assert r.phase is Phase.PROMOTED and _state(local_home).stable.version == "v2"
        assert [s.outcome for s in r.steps].count("passed") == len(r.plan)
        assert LocalPlatform("iris", local_home).get_traffic().stable == "v2"
        wait_for(lambda: LocalPlatform("iris", local_home).running_versions() == ["v2"],
                 what="v1 to be retired by the controller after scale_down_delay_s", timeout_s=60)

        down = cli("local", "down")
        assert f"stopped the controller (pid {pid})" in down.stdout, down.stdout + down.stderr
        assert leader(local_home) is None
        assert "controller none for" in cli("local", "status").stdout
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
