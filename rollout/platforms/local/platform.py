"""The local platform: model versions as processes on this machine, behind the
built-in router. The embedded default, so a rollout works with nothing else installed.

Everything it knows lives on disk (process records, router state) and in the router
itself, never in this object: a ``LocalPlatform`` made by the next CLI run sees exactly
what the previous one left running.
"""

from __future__ import annotations

import contextlib
import logging
import time
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from rollout.errors import BadInput, DeployError, PlatformError
from rollout.platforms.base import Capabilities, Health, Traffic
from rollout.platforms.local import daemon, nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.router_control import LocalRouter, grpc_backends
from rollout.platforms.local.routing import PREVIEW_PREFIX, StateFileError, load_config
from rollout.platforms.local.supervisor import ProcessRecord
from rollout.registry.base import ModelVersion, validate_model_name

log = logging.getLogger("rollout.platforms.local")

# MLflow models run under MLServer's MLflow runtime, started by a small launcher (a
# server command template, so the supervisor treats it like any custom V2 server).
MLFLOW_MLSERVER = (f"{sys.executable} -m rollout.platforms.local.mlflow_runtime --port {{port}} "
                   "--model-dir {model_dir} --name {name} --version {version}")


class LocalPlatform:
    """Runs each version of one model as a local V2 server process and splits traffic
    between them with the model's router (one router process per model)."""

    name = "local"

    def __init__(
        self,
        model: str,
        home: Path,
        server: str = sv.BUILTIN,
        ready_timeout_s: float = 60.0,
        router_port: int = 0,
        drain_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        http_timeout_s: float = 5.0,
        router_grpc_port: int = 0,
        backend_timeout_s: float = 60.0,
        shadow_timeout_s: float = 10.0,
        body_limit_bytes: int = 64 * 1024 * 1024,
        materialise: Callable[[ModelVersion], Path] | None = None,
        controller: bool = False,
        data_plane: str = "auto",
    ) -> None:
        self.model = validate_model_name(model)
        self.home = Path(home)
        sv.server_kind(server)  # a bad server choice fails here, not at first deploy
        self.server = server
        self.ready_timeout_s = ready_timeout_s
        self.router_port = router_port
        self.drain_timeout_s = drain_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.http_timeout_s = http_timeout_s
        self.router_grpc_port = router_grpc_port
        self.router_options: dict[str, float | int | str] = {
            "backend_timeout_s": backend_timeout_s, "shadow_timeout_s": shadow_timeout_s,
            "body_limit_bytes": body_limit_bytes, "data_plane": resolve_data_plane(data_plane)}
        self._http = requests.Session()
        self.router = LocalRouter(self.home, self.model, self._record, router_port, router_grpc_port,
                                  self.router_options, http_timeout_s, stop_timeout_s)
        self.materialise = materialise  # the registry's: a version whose uri is not a local directory
        self.controller = controller  # platform.controller: keep a controller daemon beside the router

    def _local(self, version: ModelVersion) -> tuple[ModelVersion, str]:
        """The version with its files on this machine (asking the registry to materialise
        a remote URI), and the server to run it with (MLflow models: MLServer's MLflow runtime)."""
        if not Path(version.uri).is_dir():
            if self.materialise is None:
                raise DeployError(f"cannot deploy {version.ref}: {version.uri} is not a local directory and this "
                                  "platform was given no registry to materialise it")
            version = replace(version, uri=str(self.materialise(version)))
        if version.runtime != "mlflow" or sv.server_kind(self.server) == "custom":
            return version, self.server
        if self.server != sv.MLSERVER:
            raise DeployError(f"cannot deploy {version.ref}: it is an MLflow model, which the {self.server} server "
                              "cannot load; use platform.server: mlserver (with mlserver-mlflow installed)")
        return version, MLFLOW_MLSERVER
    def capabilities(self) -> Capabilities:
        return self.router.capabilities

    # -- router plumbing: self.router (rollout/platforms/local/router_control.py) ----------
    def _ensure_controller(self) -> None:
        """platform.controller: a `rollout controller` leads for this home (started now if
        none does), so what is due happens on time once this command exits."""
        if self.controller:
            pid = daemon.ensure_daemon(self.home)
            if pid:
                log.info("controller for %s started beside the router: pid %d", self.home, pid)

    def _record(self, version: str) -> ProcessRecord | None:
        return sv.read_record(sv.version_record_path(self.home, self.model, version))

    def _server_ready(self, record: ProcessRecord) -> tuple[bool, str]:
        if not sv.is_alive(record):
            return False, f"process {record.pid} is gone (exited or killed); deploy again to restart it"
        for path in ("/v2/health/ready", f"/v2/models/{self.model}/ready"):
            try:
                resp = self._http.get(record.url + path, timeout=self.http_timeout_s)
            except requests.RequestException as exc:
                return False, f"pid {record.pid} port {record.port}: {path} failed: {type(exc).__name__}"
            if resp.status_code != 200:
                return False, f"pid {record.pid} port {record.port}: {path} answered {resp.status_code}"
        return True, f"pid {record.pid} port {record.port} ({record.kind})"

    # -- Platform protocol -------------------------------------------------------------
    def deploy(self, version: ModelVersion, replicas: int = 1) -> None:
        """Start ``version`` unless it already runs and is ready, then make sure the
        router runs; the first version deployed becomes stable at 100%. ``replicas`` is
        accepted for the protocol; the local platform runs one process per version.
        A failed start raises DeployError before the router config is touched."""
        if version.name != self.model:
            raise BadInput(f"this platform serves model {self.model!r}, not {version.ref}")
        record = self._record(version.version)
        if record is not None and self._server_ready(record)[0]:
            log.info("%s already running (pid %d); nothing to start", version.ref, record.pid)
        else:
            if record is not None:
                log.info("%s was recorded but is not ready; restarting it", version.ref)
                sv.stop(record, self.stop_timeout_s)
            version, server = self._local(version)  # issue 11: files from the registry, runtime by flavour
            record = sv.start_server(self.home, version, server, self.ready_timeout_s)
            log.info("%s started: pid %d on %s", version.ref, record.pid, record.url)
        self.router.ensure()
        self._ensure_controller()
        config = self.router.config()
        if config.get("stable") is None:
            self.router.put_config({"backends": {version.version: record.url}, "stable": version.version,
                              "grpc_backends": grpc_backends([record]),
                              "candidate": None, "weight": 0, "mirror": 0})
            log.info("%s is the first version of %s: stable at 100%%", version.ref, self.model)
        elif version.version in config["backends"] and (
                config["backends"][version.version] != record.url
                or config.get("grpc_backends", {}).get(version.version) != grpc_backends([record]).get(version.version)):
            config["backends"][version.version] = record.url  # it restarted on a new port
            grpc = {k: v for k, v in config.get("grpc_backends", {}).items() if k != version.version}
            config["grpc_backends"] = {**grpc, **grpc_backends([record])}
            self.router.put_config(config)

    def set_traffic(self, traffic: Traffic) -> None:
        """Point the router at ``traffic`` and read it back; both versions must run."""
        self.router.set(traffic)
        self._ensure_controller()

    def get_traffic(self) -> Traffic | None:
        """The split the router serves, or the one it saved last while it is dead
        (``LocalRouter.read``): the platform's own view for abort, rollback and adoption."""
        return self.router.read()

    def retire(self, version: str) -> None:
        """Take ``version`` out of the router, wait (up to ``drain_timeout_s``) for its
        in-flight requests, then stop its process. Refuses the stable version."""
        record = self._record(version)
        if record is None:
            return
        if self.router.record() is not None:
            config = self.router.config()
            if config.get("stable") == version:
                raise PlatformError(
                    f"version {version} is the stable version of {self.model}; make another version "
                    "stable first (promote or rollback), or use down() to stop everything"
                )
            if version in config["backends"]:
                config["backends"].pop(version)
                config.get("grpc_backends", {}).pop(version, None)
                if config.get("candidate") == version:
                    config.update(candidate=None, weight=0, mirror=0)
                self.router.put_config(config)
            self._drain(version)
        sv.stop(record, self.stop_timeout_s)
        sv.version_record_path(self.home, self.model, version).unlink(missing_ok=True)
        log.info("%s:%s retired (pid %d stopped)", self.model, version, record.pid)

    def _drain(self, version: str) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            stats = self.router.call("GET", "/router/stats", params={"window_s": 1})
            inflight = stats["versions"].get(version, {}).get("inflight", 0)
            if inflight <= 0:
                return
            if time.monotonic() >= deadline:
                log.warning("%s:%s still has %d requests in flight after %gs; stopping it anyway",
                            self.model, version, inflight, self.drain_timeout_s)
                return
            time.sleep(0.05)

    def health(self, version: str) -> Health:
        record = self._record(version)
        if record is None:
            return Health(version, False, f"version {version} of {self.model} is not deployed")
        ready, detail = self._server_ready(record)
        return Health(version, ready, detail)

    def router_health(self) -> Health:
        return self.router.health()

    def endpoint(self) -> str | None:
        router = self.router.record()
        return router.url if router is not None else None

    def grpc_endpoint(self) -> str | None:
        """``127.0.0.1:<port>`` of the router's V2 gRPC endpoint, if it runs."""
        router = self.router.record()
        port = router.extra_ports.get("grpc") if router is not None else None
        return f"127.0.0.1:{port}" if port else None

    def preview_endpoint(self) -> str | None:
        """``<router>/preview``: append ``/v2/...`` as usual; reaches only the candidate."""
        router = self.router.record()
        if router is None or self.router.config().get("candidate") is None:
            return None
        return router.url + PREVIEW_PREFIX

    def running_versions(self) -> list[str]:
        return sorted(r.version for r in sv.version_records(self.home, self.model) if sv.is_alive(r))

    def stats(self, window_s: int = 60) -> dict[str, Any]:
        """The router's ``/router/stats`` summary (see router.py for the fields)."""
        return dict(self.router.call("GET", "/router/stats", params={"window_s": window_s}))

    def down(self) -> None:
        """Stop the router and every server of this model and forget the split; works
        with unreadable or intent-only records (processes are also found by marker)."""
        sv.stop_model(self.home, self.model, self.stop_timeout_s)
        sv.router_state_path(self.home, self.model).unlink(missing_ok=True)
        log.info("%s: router and servers stopped", self.model)


@dataclass(frozen=True)
class ProcessStatus:
    record: ProcessRecord
    alive: bool


@dataclass(frozen=True)
class LocalModelStatus:
    """What ``rollout local status`` shows for one model."""

    model: str
    router: ProcessStatus | None
    traffic: Traffic | None
    servers: list[ProcessStatus] = field(default_factory=list)
    front_pid: int | None = None  # the nginx on the router's ports (nginx data plane)
    # The stable of the split a dead router left nginx serving (read only then):
    # `rollout start <model>:<stable>` brings the router back to adopt that nginx.
    last_stable: str | None = None

    @property
    def front_alone(self) -> bool:
        """nginx serves on while its router is dead (nginx_front's docstring)."""
        return self.front_pid is not None and (self.router is None or not self.router.alive)


def list_local(home: Path) -> list[LocalModelStatus]:
    """Every model with local processes under ``home``: router, traffic, servers."""
    root = Path(home) / "local"
    out: list[LocalModelStatus] = []
    for model_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        model = model_dir.name
        router_rec = sv.read_record(sv.router_record_path(home, model))
        router = ProcessStatus(router_rec, sv.is_alive(router_rec)) if router_rec else None
        traffic = None
        if router is not None and router.alive:
            try:
                traffic = LocalPlatform(model, home, http_timeout_s=2.0).get_traffic()
            except (PlatformError, BadInput):
                traffic = None
        servers = [ProcessStatus(r, sv.is_alive(r)) for r in sv.version_records(home, model)]
        state_file = sv.router_state_path(home, model)
        row = LocalModelStatus(model, router, traffic, servers,
                               nginx_front.running_pid(nginx_front.prefix_for(state_file)))
        if row.front_alone:
            with contextlib.suppress(StateFileError):
                row = replace(row, last_stable=load_config(state_file)[0].stable)
        if router is None and not servers and row.front_pid is None:
            continue
        out.append(row)
    return out


def resolve_data_plane(choice: str) -> str:
    """``auto`` is nginx where nginx and its Lua module are installed, else python; an
    explicit ``nginx`` that cannot run here is refused now, not at the first deploy."""
    if choice not in ("auto", "nginx", "python"):
        raise BadInput(f"platform.data_plane must be auto, nginx or python, not {choice!r}")
    if choice == "python":
        return choice
    why = nginx_front.missing()
    if why is None:
        return "nginx"
    if choice == "nginx":
        raise BadInput(f"platform.data_plane is nginx, but {why}")
    return "python"
