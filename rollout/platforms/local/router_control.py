"""The local platform's ``Router`` (rollout.platforms.base.Router): the model's router
process, driven through its admin API. The same interface as the Kubernetes routers, so
the platform and the engine treat a split the same way wherever it is applied.

Everything lives in the router process and its state file, never in this object: a
``LocalRouter`` made by the next CLI run sees the split the previous one left.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from rollout.errors import BadInput, PlatformError
from rollout.platforms.base import Capabilities, Health, Traffic
from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.routing import StateFileError, load_config
from rollout.platforms.local.supervisor import ProcessRecord

log = logging.getLogger("rollout.platforms.local")

CAPABILITIES = Capabilities(mirror=True, preview=True, exact_weights=True)


class LocalRouter:
    """One model's router process. ``locate(version)`` is the platform's record of the
    process serving a version (None if it has none), so ``set`` can point the split at it."""

    capabilities = CAPABILITIES

    def __init__(self, home: Path, model: str, locate: Callable[[str], ProcessRecord | None],
                 port: int = 0, grpc_port: int = 0, options: dict[str, float | int | str] | None = None,
                 http_timeout_s: float = 5.0, stop_timeout_s: float = 5.0) -> None:
        self.home, self.model, self.locate = Path(home), model, locate
        self.port, self.grpc_port = port, grpc_port
        self.options = dict(options or {})
        self.http_timeout_s, self.stop_timeout_s = http_timeout_s, stop_timeout_s
        self._http = requests.Session()

    # -- the process -------------------------------------------------------------------
    def record(self) -> ProcessRecord | None:
        """The router's record if its process is alive."""
        record = sv.read_record(sv.router_record_path(self.home, self.model))
        return record if record is not None and sv.is_alive(record) else None

    def ensure(self) -> ProcessRecord:
        """The running router, started (on its previous ports where they are free) if dead."""
        record = self.record()
        if record is not None:
            return record
        old = sv.read_record(sv.router_record_path(self.home, self.model))
        port = self.port or (old.port if old else 0)
        grpc_port = self.grpc_port or (old.extra_ports.get("grpc", 0) if old else 0)
        if old is not None:
            sv.stop(old, self.stop_timeout_s, keep_front=True)
        # Only a port that is really taken moves the router; any other failure (a
        # damaged state file, a bad flag) is reported as it is. The router's own nginx
        # front, left serving by the dead router, holds the port for it: it is adopted.
        ours = nginx_front.running_pid(nginx_front.prefix_for(sv.router_state_path(self.home, self.model))) is not None
        if port and not self.port and not ours and not port_free(port):
            log.warning("router port %d of %s is taken; starting on another port", port, self.model)
            port = 0
        if grpc_port and not self.grpc_port and not ours and not port_free(grpc_port):
            log.warning("router gRPC port %d of %s is taken; starting on another port", grpc_port, self.model)
            grpc_port = 0
        record = sv.start_router(self.home, self.model, port, grpc_port=grpc_port, options=self.options)
        log.info("router for %s started: pid %d, %s (gRPC port %s)", self.model, record.pid, record.url,
                 record.extra_ports.get("grpc"))
        return record

    # -- the admin API -----------------------------------------------------------------
    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        router = self.record()
        if router is None:
            raise PlatformError(f"the router of {self.model} is not running; deploy a version first")
        try:
            resp = self._http.request(method, router.url + path, timeout=self.http_timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise PlatformError(f"router of {self.model} at {router.url} did not answer {method} {path}: {exc}") from exc
        if resp.status_code == 400:
            raise BadInput(f"router of {self.model} refused {method} {path}: {resp.json().get('error', resp.text)}")
        if resp.status_code != 200:
            raise PlatformError(f"router of {self.model} answered {resp.status_code} to {method} {path}: {resp.text}")
        return resp.json()

    def config(self) -> dict[str, Any]:
        return dict(self.call("GET", "/router/config"))

    def put_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("PUT", "/router/config", json=config))

    # -- Router ------------------------------------------------------------------------
    def set(self, traffic: Traffic) -> None:
        """Point the router at ``traffic`` and read it back; both versions must run."""
        if traffic.stable is None:
            raise BadInput("traffic.stable is required: the router needs a version to send traffic to")
        records: list[ProcessRecord] = []
        for version in (traffic.stable, traffic.candidate):
            if version is None:
                continue
            record = self.locate(version)
            if record is None or not sv.is_alive(record):
                raise PlatformError(f"version {version} of {self.model} is not running; deploy it first")
            records.append(record)
        self.ensure()
        current = self.config()
        self.put_config({
            "backends": {r.version: r.url for r in records}, "grpc_backends": grpc_backends(records),
            "stable": traffic.stable, "candidate": traffic.candidate,
            "weight": traffic.weight, "mirror": traffic.mirror,
            "float_rtol": current.get("float_rtol", 1e-6), "float_atol": current.get("float_atol", 1e-12),
        })
        observed = self.read()
        expected = Traffic(traffic.stable, traffic.candidate, traffic.weight, traffic.mirror)
        if observed != expected:
            raise PlatformError(f"router of {self.model} reports {observed} after setting {expected}")
        log.info("traffic of %s: %s", self.model, expected)

    def read(self) -> Traffic | None:
        """The split the router serves; with the router dead, the split it saved last
        (what it serves again once restarted): the platform's own view, which abort,
        rollback and adoption read when the rollout state is gone."""
        if self.record() is None:
            try:
                saved, _ = load_config(sv.router_state_path(self.home, self.model))
            except StateFileError:
                return None
            if saved.stable is None:
                return None
            return Traffic(saved.stable, saved.candidate, saved.weight, saved.mirror)
        config = self.config()
        if config.get("stable") is None:
            return None
        return Traffic(config["stable"], config.get("candidate"), int(config["weight"]), int(config["mirror"]))

    def health(self) -> Health:
        """Up if the router's process lives and answers its admin API; the detail says
        which of the two failed (a killed router, a hung one)."""
        try:
            record = sv.read_record(sv.router_record_path(self.home, self.model))
        except PlatformError as exc:
            return Health("router", False, str(exc))
        if record is None:
            return Health("router", False, f"the router of {self.model} was never started here")
        if not sv.is_alive(record):
            return Health("router", False, f"router process {record.pid} (port {record.port}) is gone")
        try:
            self.config()
        except (PlatformError, BadInput) as exc:
            return Health("router", False, f"router pid {record.pid} does not answer: {exc}")
        return Health("router", True, f"pid {record.pid} port {record.port}")


def port_free(port: int, settle_s: float = 2.0) -> bool:
    """True if ``port`` can be bound on 127.0.0.1. A process just killed may hold its
    sockets for a moment after it shows as dead (its threads still exiting), so a
    taken port is retried for ``settle_s`` before it counts as taken."""
    deadline = time.monotonic() + settle_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)


def grpc_backends(records: list[ProcessRecord]) -> dict[str, str]:
    """version -> host:port of its gRPC server, for the servers that have one (MLServer;
    the builtin server's gRPC port too when it opened one)."""
    return {r.version: f"127.0.0.1:{r.extra_ports['grpc']}" for r in records if r.extra_ports.get("grpc")}
