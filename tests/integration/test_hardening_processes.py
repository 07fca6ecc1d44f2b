"""Processes the local platform starts: an allow-listed environment, found and stopped by
marker when their records are damaged or were never completed, and never a shell for a
hostile version name. Real CLI, real router and model-server processes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from rollout.platforms.local import supervisor as sv
from rollout.registry.base import ModelVersion

from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

PLANTED = {"ROLLOUT_TEST_SECRET": "planted-7f3a9c", "AWS_SECRET_ACCESS_KEY": "planted-aws-1b2c",
           "MLFLOW_TRACKING_TOKEN": "planted-mlflow-88d1", "GITHUB_TOKEN": "planted-gh-4e5f"}


def processes_of(home: Path, model: str = "iris") -> list[psutil.Process]:
    return sv.marked_processes(sv.marker_for(home, model, ""), exact=False)


def test_children_get_an_allow_listed_environment_with_a_marker(cli, make_spec, local_home, monkeypatch) -> None:
    for k, v in PLANTED.items():
        monkeypatch.setenv(k, v)
    result = cli("start", "iris:v1", "-f", str(make_spec()))
    assert result.returncode == 0, result.stderr
    procs = processes_of(local_home)
    kinds = {p.environ()[sv.MARKER_ENV].rsplit("|", 1)[1] for p in procs}
    assert kinds == {"router", "v1"}
    for proc in procs:
        env = proc.environ()
        assert not set(PLANTED) & set(env), f"pid {proc.pid} inherited {set(PLANTED) & set(env)}"
        assert not any(v in " ".join(env.values()) for v in PLANTED.values())
        assert "PATH" in env and env["PYTHONPATH"].startswith(str(Path(sv.rollout.__file__).parent.parent))


def test_local_down_stops_every_process_even_with_corrupt_records(cli, make_spec, local_home) -> None:
    assert cli("start", "iris:v1", "-f", str(make_spec())).returncode == 0
    procs = processes_of(local_home)
    assert len(procs) == 2
    base = sv.model_home(local_home, "iris")
    (base / "router.json").write_text("{not json")
    (base / "versions" / "v1.json").write_text(json.dumps({"pid": "1; rm -rf /", "port": []}))

    status = cli("local", "status")
    assert "Traceback" not in status.stderr
    result = cli("local", "down", "iris")
    assert result.returncode == 0, result.stderr
    assert "stopped iris" in result.stdout
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"still running: {[p.pid for p in alive]}"
    assert not (base / "router.json").exists() and not list((base / "versions").glob("*.json"))


def test_a_server_recorded_only_as_an_intent_is_still_stopped_by_local_down(
        cli, local_home, iris_version) -> None:
    """A kill between spawning a server and recording its pid: the record says pid 0
    (intent), the process runs. It is found by its marker."""
    mv: ModelVersion = iris_version("v7")
    port = sv.free_port()
    marker = sv.marker_for(local_home, "iris", "v7")
    command, _ = sv.server_command(sv.BUILTIN, mv, port, local_home / "rt")
    intent = sv.ProcessRecord(model="iris", version="v7", kind=sv.BUILTIN, pid=0, port=port, command=command,
                              log_file=str(local_home / "v7.log"), started_at=time.time(), marker=marker)
    sv.write_record(sv.version_record_path(local_home, "iris", "v7"), intent)
    proc = sv.launch(command, local_home / "v7.log", marker=marker)
    try:
        wait_for(lambda: processes_of(local_home), what="the server to carry its marker")
        result = cli("local", "down", "iris")
        assert result.returncode == 0, result.stderr
        assert proc.wait(timeout=10) is not None
        assert not processes_of(local_home)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_during_a_candidates_start_up_leaves_nothing_local_down_cannot_stop(
        cli, cli_background, make_spec, local_home) -> None:
    """The row from the fault run: `kill -9` of `rollout start` while the candidate's
    server is starting left a server no record pointed to. Now it is recorded before it
    is spawned and carries a marker: `local down` stops it and everything else."""
    import os
    import signal
    import sys

    slow = f'sh -c "sleep 5; exec {sys.executable} -m rollout.platforms.local.v2server --model-dir {{model_dir}} ' \
           f'--name {{name}} --version {{version}} --port {{port}}"'
    assert cli("start", "iris:v1", "-f", str(make_spec())).returncode == 0
    proc = cli_background("start", "iris:v2", "-f", str(make_spec(platform={"server": slow})))
    record = sv.version_record_path(local_home, "iris", "v2")
    wait_for(lambda: record.exists() and any(p.environ().get(sv.MARKER_ENV, "").endswith("|v2")
                                             for p in processes_of(local_home)),
             what="the candidate's server to be starting")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    procs = processes_of(local_home)
    assert {p.environ()[sv.MARKER_ENV].rsplit("|", 1)[1] for p in procs} == {"router", "v1", "v2"}

    result = cli("local", "down", "iris")
    assert result.returncode == 0, result.stderr
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive and not processes_of(local_home)


def test_start_server_records_its_intent_before_spawning(local_home, iris_version, monkeypatch) -> None:
    seen: list[dict] = []
    real_launch = sv.launch

    def spying_launch(*args, **kwargs):
        seen.append(json.loads(sv.version_record_path(local_home, "iris", "v1").read_text()))
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(sv, "launch", spying_launch)
    record = sv.start_server(local_home, iris_version("v1"), sv.BUILTIN, 20)
    try:
        assert seen and seen[0]["pid"] == 0 and seen[0]["marker"] == sv.marker_for(local_home, "iris", "v1")
        assert sv.read_record(sv.version_record_path(local_home, "iris", "v1")).pid == record.pid > 0
    finally:
        sv.stop(record, 2.0)


def test_a_hostile_version_in_a_git_tree_never_runs_anything(cli, make_spec, registry, local_home, tmp_path) -> None:
    """Anyone with push access can name a tree `v9$(touch ...)`; `:latest` would resolve to
    it. The registry is refused, naming the entry (exit 2), before any process starts; the
    injected command never runs, even through a `sh -c` server template, and what serves
    keeps serving."""
    import sys

    template = f'sh -c "{sys.executable} -m rollout.platforms.local.v2server --model-dir {{model_dir}} ' \
               f'--name {{name}} --version {{version}} --port {{port}}"'
    spec = make_spec(platform={"server": template})
    assert cli("start", "iris:v1", "-f", str(spec)).returncode == 0

    pwned = tmp_path / "pwned"
    hostile = f"v9$(touch {pwned})"
    target = registry / "models" / "iris" / hostile
    target.mkdir(parents=True)
    (target / "model.joblib").write_bytes((registry / "models" / "iris" / "v1" / "model.joblib").read_bytes())
    subprocess.run(["git", "-C", str(registry), "add", "-A"], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(registry), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "evil"],
                   check=True, capture_output=True)

    for ref in ("iris:latest", "iris:v1"):  # an odd tree entry makes the whole model's listing untrusted
        result = cli("start", ref, "-f", str(spec))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "version 'v9$(touch" in result.stderr and "is not valid" in result.stderr
        assert "Traceback" not in result.stderr
    assert not pwned.exists()
    assert {p.environ()[sv.MARKER_ENV].rsplit("|", 1)[1] for p in processes_of(local_home)} == {"router", "v1"}
