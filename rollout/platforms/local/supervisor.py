"""Start, watch and stop the local platform's processes (model servers and routers).

Processes are detached (own session and process group) so they outlive the CLI run
that started them: a rollout spans several CLI invocations and CI steps. What a later
run needs to find them again is written to small JSON records under
``<home>/local/<model>/``; a process counts as alive only if its pid exists, is not a
zombie and has the start time recorded with it (pids get reused).

Intent comes before effect: a record is written before its process is spawned (pid 0)
and again with the pid right after, and every process gets ``$ROLLOUT_SUPERVISED``
(home, model, version) in an otherwise allow-listed environment (``child_env``). So a
kill at any instant, or a record that is later damaged, never leaves a process that
``stop_model`` (`rollout local down`) cannot find: it looks for the marker with psutil.

Layout of ``<home>/local/<model>/``::

    router.json  router.log  router-state.json
    versions/<version>.json  logs/<version>.log  runtime/<version>/ (MLServer settings)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import requests

import rollout
from rollout import names, redact
from rollout.errors import DeployError, PlatformError, printable
from rollout.platforms.local import nginx_front
from rollout.server_template import parse_template, render_template
from rollout.registry.base import ModelVersion

log = logging.getLogger("rollout.platforms.local")

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
    # $ROLLOUT_SUPERVISED of the process and its children: finds them with no usable record.
    marker: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(**data)

    @property
    def spawned(self) -> bool:
        """False for an intent record: written before the process was started."""
        return self.pid > 0


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
        record = ProcessRecord.from_json(json.loads(path.read_text()))
        if not isinstance(record.pid, int) or not isinstance(record.port, int):
            raise TypeError("pid and port must be integers")
        return record
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise PlatformError(f"process record {path} is unreadable ({printable(str(exc), 120, False)}); "
                            "`rollout local down` stops its processes anyway; then redeploy") from None


def version_records(home: Path, model: str) -> list[ProcessRecord]:
    """The readable version records of ``model``; an unreadable one is logged and skipped
    (its processes are still found by marker: see ``stop_model``)."""
    directory = model_home(home, model) / "versions"
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = read_record(path)
        except PlatformError as exc:
            log.warning("%s", exc)
            continue
        if record is not None:
            out.append(record)
    return out


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
    if pid <= 0:  # an intent record (not spawned yet); 0 and -1 would mean "our own group" to the OS
        return False
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
    if pid <= 0:  # never signal our own process group
        return
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


def stop(record: ProcessRecord, timeout_s: float = 5.0, keep_front: bool = False) -> None:
    """Stop the process (and its group), then anything else carrying its marker (a
    process started after its intent was recorded but before its pid was); a process
    already gone is fine. A router's nginx front goes too, unless ``keep_front`` (a
    router started again adopts it)."""
    kill_group(record.pid, record.start_ticks, timeout_s)
    if record.marker:
        kill_marked(record.marker, exact=True, timeout_s=timeout_s)
    if record.kind == ROUTER_KIND and not keep_front and "--state-file" in record.command[:-1]:
        # A router's nginx front outlives a router that died (nginx_front's docstring);
        # stopping the router is what stops it then.
        state_file = Path(record.command[record.command.index("--state-file") + 1])
        nginx_front.stop_left_behind(nginx_front.prefix_for(state_file), timeout_s)


def marker_for(home: Path, model: str, version: str) -> str:
    """The value of $ROLLOUT_SUPERVISED for one process: home, model and version."""
    return f"{Path(home).resolve()}|{model}|{version}"


def marked_processes(marker: str, exact: bool) -> list[psutil.Process]:
    """Processes whose environment carries ``marker`` (``exact=False``: as a prefix)."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            value = proc.environ().get(MARKER_ENV)
        except (psutil.Error, OSError):
            continue  # gone, a zombie, or another user's
        if value is not None and (value == marker if exact else value.startswith(marker)):
            found.append(proc)
    return found


def kill_marked(marker: str, exact: bool, timeout_s: float = 5.0) -> int:
    """SIGTERM every process carrying ``marker``, SIGKILL what is left after
    ``timeout_s``; returns how many there were."""
    procs = marked_processes(marker, exact)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)
    for proc in procs:  # reap our own children
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.pid, os.WNOHANG)
    return len(procs)


def stop_model(home: Path, model: str, timeout_s: float = 5.0) -> int:
    """Stop the router and every server of ``model`` and delete their records, even when
    the records are unreadable or were written as intents only: processes are found by
    record and then by marker. Returns how many marked processes were still running after
    the recorded ones were stopped."""
    base = model_home(home, model)
    paths = [router_record_path(home, model), *sorted((base / "versions").glob("*.json"))]
    for path in paths:
        try:
            record = read_record(path)
        except PlatformError as exc:
            log.warning("%s", exc)
            record = None
        if record is not None:
            kill_group(record.pid, record.start_ticks, timeout_s)
    leftover = kill_marked(marker_for(home, model, ""), exact=False, timeout_s=timeout_s)
    # The router's nginx front carries no marker (nginx clears its environment) and
    # outlives a router that died: it is found by its prefix.
    nginx_front.stop_left_behind(nginx_front.prefix_for(router_state_path(home, model)), timeout_s)
    for path in paths:
        path.unlink(missing_ok=True)
    return leftover


# -- starting ------------------------------------------------------------------------
def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What a model server or router inherits: what Python, MLServer and numeric libraries need
# to run, nothing else. Credentials (Prometheus tokens, webhook URLs, cloud and registry
# keys, CI tokens) never reach a child: servers serve a directory already materialised by
# the registry, so they need no MLflow or cloud credentials either. $ROLLOUT_CHILD_ENV (a
# comma-separated list of names) passes more, for a custom server that needs them.
CHILD_ENV_ALLOW = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR", "TEMP", "TMP", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
)
# Numeric libraries' tuning (OPENBLAS_CORETYPE changes inference latency several-fold where
# CPU detection fails) and MLServer's own settings.
CHILD_ENV_PREFIXES = ("MLSERVER_", "LC_", "OPENBLAS_", "OMP_", "MKL_", "NVPL_", "GOTO_")
CHILD_ENV_EXTRA = "ROLLOUT_CHILD_ENV"
MARKER_ENV = "ROLLOUT_SUPERVISED"


def child_env(marker: str = "", environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment for a child, with ``rollout`` importable (servers
    unpickle classes from it, routers are modules of it) and ``marker`` set, so the
    process and its children can be found without a record. A value holding a known
    secret (rollout/redact.py) is dropped even from an allowed variable."""
    source = os.environ if environ is None else environ
    extra = {n.strip() for n in source.get(CHILD_ENV_EXTRA, "").split(",") if n.strip()}
    env = {k: v for k, v in source.items()
           if (k in CHILD_ENV_ALLOW or k.startswith(CHILD_ENV_PREFIXES) or k in extra) and redact.scrub(v) == v}
    root = str(Path(rollout.__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if marker:
        env[MARKER_ENV] = marker
    return env


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def launch(command: list[str], log_file: Path, cwd: Path | None = None, marker: str = "") -> subprocess.Popen[bytes]:
    """Start ``command`` detached, output appended to ``log_file``, with the allow-listed
    environment carrying ``marker``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {shlex.join(command)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=child_env(marker), cwd=cwd, close_fds=True,
            )
        except OSError as exc:
            raise DeployError(f"cannot start {shlex.join(command)!r}: {exc.strerror or exc}") from None


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
    """builtin, mlserver or custom; a custom template is checked now (see
    rollout/server_template.py)."""
    if server in (BUILTIN, MLSERVER):
        return server
    parse_template(server)
    return "custom"


def server_command(
    server: str, mv: ModelVersion, port: int, runtime_dir: Path
) -> tuple[list[str], dict[str, int]]:
    """The command line for one model server, plus any extra ports it binds. The name
    and version are validated again here: they become argv items and file names."""
    names.model_name(mv.name)
    names.version(mv.version)
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
    values = {"port": str(port), "model_dir": str(mv.uri), "name": mv.name, "version": mv.version}
    return render_template(server, values), {}


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
    DeployError (with nothing left running) if it exits or is not ready in time.

    The record is written before the process is spawned (an intent, pid 0) and again
    with its pid right after: a kill at any instant leaves a record or a marked process
    (usually both) that `rollout local down` and the next deploy find and stop."""
    if not (Path(mv.uri) / "model.joblib").exists() and server_kind(server) != "custom":
        raise DeployError(f"cannot deploy {mv.ref}: {mv.uri}/model.joblib does not exist")
    base = model_home(home, mv.name)
    port = free_port()
    runtime_dir = base / "runtime" / mv.version
    command, extra = server_command(server, mv, port, runtime_dir)
    log_file = base / "logs" / f"{mv.version}.log"
    path = version_record_path(home, mv.name, mv.version)
    marker = marker_for(home, mv.name, mv.version)
    kill_marked(marker, exact=True)  # a server of this version no record points to (an earlier kill)
    intent = ProcessRecord(
        model=mv.name, version=mv.version, kind=server_kind(server), pid=0, port=port,
        command=command, log_file=str(log_file), started_at=time.time(), start_ticks=None,
        extra_ports=extra, model_dir=str(mv.uri), marker=marker,
    )
    write_record(path, intent)
    proc = launch(command, log_file, cwd=runtime_dir if runtime_dir.exists() else None, marker=marker)
    record = replace(intent, pid=proc.pid, start_ticks=start_ticks(proc.pid))
    write_record(path, record)
    what = f"model server for {mv.ref} ({server_kind(server)}, port {port})"
    try:
        wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready",
                          f"http://127.0.0.1:{port}/v2/models/{mv.name}/ready"], ready_timeout_s, what, log_file)
    except DeployError:
        kill_marked(marker, exact=True, timeout_s=1.0)
        path.unlink(missing_ok=True)
        raise
    return record


def start_router(
    home: Path, model: str, port: int, ready_timeout_s: float = 15.0, grpc_port: int | None = None,
    options: dict[str, float | int | str] | None = None,
) -> ProcessRecord:
    """Start the model's router on ``port`` (0: any free port) with its persisted state;
    ``grpc_port`` (0: any free port) also opens its V2 gRPC endpoint; ``options`` are
    the router's other flags by name (``backend_timeout_s``: ``--backend-timeout-s``).
    Recorded as an intent before it is spawned, like a server."""
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
    path = router_record_path(home, model)
    marker = marker_for(home, model, ROUTER_KIND)
    intent = ProcessRecord(
        model=model, version=ROUTER_KIND, kind=ROUTER_KIND, pid=0, port=port, command=command,
        log_file=str(log_file), started_at=time.time(), start_ticks=None, marker=marker, extra_ports=extra,
    )
    write_record(path, intent)
    proc = launch(command, log_file, marker=marker)
    record = replace(intent, pid=proc.pid, start_ticks=start_ticks(proc.pid))
    write_record(path, record)
    try:
        wait_ready(proc, [f"http://127.0.0.1:{port}/router/health"], ready_timeout_s,
                   f"router for {model} (port {port})", log_file)
    except DeployError:
        kill_marked(marker, exact=True, timeout_s=1.0)
        path.unlink(missing_ok=True)
        raise
    return record
