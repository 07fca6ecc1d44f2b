"""Start, watch and stop the local platform's processes (model servers and routers).

Processes are detached (own session and process group) so they outlive the CLI run
that started them: a rollout spans several CLI invocations and CI steps. What a later
run needs to find them again is written to small JSON records under
``<home>/local/<model>/``; a process counts as alive only if its pid exists, is not a
zombie and has the start time recorded with it (pids get reused).

Layout of ``<home>/local/<model>/``::

    router.json  router.log  router-state.json
    versions/<version>.json  logs/<version>.log  runtime/<version>/ (MLServer settings)
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

import rollout
from rollout.errors import BadInput, DeployError, PlatformError
from rollout.registry.base import ModelVersion

BUILTIN = "builtin"
MLSERVER = "mlserver"
ROUTER_KIND = "router"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ProcessRecord:
    """One supervised process as written to disk."""

    model: str
    version: str  # the model version, or "router" for the model's router
    kind: str  # builtin | mlserver | custom | router
    pid: int
    port: int
    command: list[str]
    log_file: str
    started_at: float
    start_ticks: int | None = None  # /proc/<pid>/stat starttime: tells a reused pid apart
    extra_ports: dict[str, int] = field(default_factory=dict)
    model_dir: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(**data)


# -- paths and records -------------------------------------------------------------
def model_home(home: Path, model: str) -> Path:
    return Path(home) / "local" / model


def version_record_path(home: Path, model: str, version: str) -> Path:
    return model_home(home, model) / "versions" / f"{version}.json"


def router_record_path(home: Path, model: str) -> Path:
    return model_home(home, model) / "router.json"


def router_state_path(home: Path, model: str) -> Path:
    return model_home(home, model) / "router-state.json"


def write_record(path: Path, record: ProcessRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2))
    os.replace(tmp, path)


def read_record(path: Path) -> ProcessRecord | None:
    try:
        return ProcessRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise PlatformError(f"process record {path} is unreadable ({exc}); delete it and redeploy") from exc


def version_records(home: Path, model: str) -> list[ProcessRecord]:
    directory = model_home(home, model) / "versions"
    records = (read_record(p) for p in sorted(directory.glob("*.json")))
    return [r for r in records if r is not None]


# -- process liveness ----------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) from /proc, None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_alive(pid: int, ticks: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, if given, started at ``ticks``."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own dead children
        if done == pid:
            return False
    except ChildProcessError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no procfs: fall back to signal 0
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    state, started = stat
    if state in ("Z", "X"):
        return False
    return ticks is None or started == ticks


def is_alive(record: ProcessRecord) -> bool:
    return pid_alive(record.pid, record.start_ticks)


def kill_group(pid: int, ticks: int | None, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``timeout_s``.
    The group is the unit: MLServer and shells start children of their own."""
    if not pid_alive(pid, ticks):
        _signal_group(pid, signal.SIGKILL)  # orphans of a dead leader, if any
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, ticks):
            break
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pid_alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(record: ProcessRecord, timeout_s: float = 5.0) -> None:
    """Stop the process (and its group); a process already gone is fine."""
    kill_group(record.pid, record.start_ticks, timeout_s)


# -- starting ------------------------------------------------------------------------
def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment for children: ``rollout`` importable (servers unpickle classes
    from it, routers are modules of it) whether or not it is installed."""
    env = dict(os.environ)
    root = str(Path(rollout.__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def launch(command: list[str], log_file: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` detached, output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {shlex.join(command)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=child_env(), cwd=cwd, close_fds=True,
            )
        except OSError as exc:
            raise DeployError(f"cannot start {shlex.join(command)!r}: {exc}") from exc


def wait_ready(
    proc: subprocess.Popen[bytes], urls: list[str], timeout_s: float, what: str, log_file: Path
) -> None:
    """Poll ``urls`` until all answer 200. On early exit or timeout, kill the process
    group and raise DeployError naming ``what``, the reason and the log's last lines."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    last = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            kill_group(proc.pid, None, 0.5)
            raise DeployError(
                f"{what} exited with code {code} before becoming ready; last lines of {log_file}:\n"
                f"{log_tail(log_file)}"
            )
        try:
            pending = [u for u in urls if requests.get(u, timeout=1.0).status_code != 200]
            if not pending:
                return
            last = f"{pending[0]} not 200 yet"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
        if time.monotonic() >= deadline:
            kill_group(proc.pid, start_ticks(proc.pid), 2.0)
            proc.poll()
            raise DeployError(
                f"{what} did not become ready within {timeout_s:g}s ({last}); it was stopped. "
                f"Last lines of {log_file}:\n{log_tail(log_file)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def server_kind(server: str) -> str:
    if server in (BUILTIN, MLSERVER):
        return server
    if not server.strip():
        raise BadInput("server must be 'builtin', 'mlserver' or a command template with {port}")
    return "custom"


def server_command(
    server: str, mv: ModelVersion, port: int, runtime_dir: Path
) -> tuple[list[str], dict[str, int]]:
    """The command line for one model server, plus any extra ports it binds."""
    kind = server_kind(server)
    if kind == BUILTIN:
        command = [sys.executable, "-m", "rollout.platforms.local.v2server", "--model-dir", mv.uri,
                   "--name", mv.name, "--version", mv.version, "--port", str(port)]
        from rollout.platforms.local import v2grpc

        if not v2grpc.available():  # gRPC needs tritonclient[grpc]'s generated classes
            return command, {}
        grpc_port = free_port()
        return command + ["--grpc-port", str(grpc_port)], {"grpc": grpc_port}
    if kind == MLSERVER:
        return mlserver_command(mv, port, runtime_dir)
    values = {"port": port, "model_dir": mv.uri, "name": mv.name, "version": mv.version}
    try:
        return [part.format(**values) for part in shlex.split(server)], {}
    except (KeyError, IndexError, ValueError) as exc:
        raise BadInput(
            f"server command template {server!r} is invalid ({exc}); placeholders are "
            "{port}, {model_dir}, {name}, {version}"
        ) from exc


def mlserver_command(mv: ModelVersion, port: int, runtime_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Write MLServer's settings for one version and return ``mlserver start <dir>``.
    ``parallel_workers: 0`` keeps inference in the main process: it starts faster and
    dodges the uvloop>=0.22 worker crash (see ENVIRONMENT.md)."""
    exe = Path(sys.executable).parent / "mlserver"
    if not exe.exists():
        raise DeployError(
            f"cannot deploy {mv.ref} with MLServer: {exe} not found; install rollout[mlserver] "
            "into this environment or use server='builtin'"
        )
    grpc_port, metrics_port = free_port(), free_port()
    runtime_dir.mkdir(parents=True, exist_ok=True)
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port,
                "metrics_port": metrics_port, "parallel_workers": 0}
    model_settings = {
        "name": mv.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(Path(mv.uri).resolve() / "model.joblib"), "version": mv.version},
    }
    (runtime_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    (runtime_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return [str(exe), "start", str(runtime_dir)], {"grpc": grpc_port, "metrics": metrics_port}


def start_server(home: Path, mv: ModelVersion, server: str, ready_timeout_s: float) -> ProcessRecord:
    """Start a model server for ``mv``, wait until it is ready, record it. Raises
    DeployError (with nothing left running) if it exits or is not ready in time."""
    if not (Path(mv.uri) / "model.joblib").exists() and server_kind(server) != "custom":
        raise DeployError(f"cannot deploy {mv.ref}: {mv.uri}/model.joblib does not exist")
    base = model_home(home, mv.name)
    port = free_port()
    runtime_dir = base / "runtime" / mv.version
    command, extra = server_command(server, mv, port, runtime_dir)
    log_file = base / "logs" / f"{mv.version}.log"
    proc = launch(command, log_file, cwd=runtime_dir if runtime_dir.exists() else None)
    ticks = start_ticks(proc.pid)
    what = f"model server for {mv.ref} ({server_kind(server)}, port {port})"
    wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready",
                      f"http://127.0.0.1:{port}/v2/models/{mv.name}/ready"], ready_timeout_s, what, log_file)
    record = ProcessRecord(
        model=mv.name, version=mv.version, kind=server_kind(server), pid=proc.pid, port=port,
        command=command, log_file=str(log_file), started_at=time.time(), start_ticks=ticks,
        extra_ports=extra, model_dir=str(mv.uri),
    )
    write_record(version_record_path(home, mv.name, mv.version), record)
    return record


def start_router(
    home: Path, model: str, port: int, ready_timeout_s: float = 15.0, grpc_port: int | None = None,
    options: dict[str, float | int] | None = None,
) -> ProcessRecord:
    """Start the model's router on ``port`` (0: any free port) with its persisted state;
    ``grpc_port`` (0: any free port) also opens its V2 gRPC endpoint; ``options`` are
    the router's other flags by name (``backend_timeout_s``: ``--backend-timeout-s``)."""
    port = port or free_port()
    base = model_home(home, model)
    command = [sys.executable, "-m", "rollout.platforms.local.router", "--model", model,
               "--port", str(port), "--state-file", str(router_state_path(home, model))]
    extra: dict[str, int] = {}
    if grpc_port is not None:
        extra["grpc"] = grpc_port or free_port()
        command += ["--grpc-port", str(extra["grpc"])]
    for name, value in (options or {}).items():
        command += ["--" + name.replace("_", "-"), str(value)]
    log_file = base / "router.log"
    proc = launch(command, log_file)
    ticks = start_ticks(proc.pid)
    wait_ready(proc, [f"http://127.0.0.1:{port}/router/health"], ready_timeout_s,
               f"router for {model} (port {port})", log_file)
    record = ProcessRecord(
        model=model, version=ROUTER_KIND, kind=ROUTER_KIND, pid=proc.pid, port=port, command=command,
        log_file=str(log_file), started_at=time.time(), start_ticks=ticks, extra_ports=extra,
    )
    write_record(router_record_path(home, model), record)
    return record
