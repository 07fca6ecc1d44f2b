"""`rollout controller --platform kubernetes` against the fake API server: two replicas
run, exactly one leads (the `rollout-controller` Lease names it), and when the leader is
killed with kill -9 the other takes the Lease over once it has gone unrenewed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kubernetes.conftest import NAMESPACE
from tests.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 2

pytestmark = pytest.mark.timeout(120)


def _replica(kubeconfig: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "rollout", "--namespace", NAMESPACE, "controller",
                             "--platform", "kubernetes", "--kubeconfig", str(kubeconfig), "--port", "0",
                             "--lease-duration", str(LEASE_S)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _holder(cluster) -> str:
    lease = cluster.find("leases", "rollout-controller", NAMESPACE)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def _line_with(proc: subprocess.Popen, text: str) -> str:
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the replica exited before printing {text!r}")
        if text in line:
            return line


def test_two_replicas_one_leads_and_the_other_takes_over_after_the_leader_is_killed(cluster, kubeconfig):
    first = _replica(kubeconfig)
    second = None
    try:
        _line_with(first, "leading for namespace")
        assert f"pid {first.pid} " in _holder(cluster)
        second = _replica(kubeconfig)
        line = _line_with(second, "standing by for namespace")
        assert f"pid {first.pid} " in line, "the standby names the leader"
        assert f"pid {first.pid} " in _holder(cluster), "exactly one leads"

        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: f"pid {second.pid} " in _holder(cluster), what="the standby to take the Lease",
                 timeout_s=10 * LEASE_S)
        print(f"takeover {time.monotonic() - killed:.1f}s after kill -9 (lease {LEASE_S}s)")
        lease = cluster.find("leases", "rollout-controller", NAMESPACE)
        assert lease["spec"]["leaseTransitions"] == 1
        _line_with(second, "leading for namespace")
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.communicate(timeout=10)
