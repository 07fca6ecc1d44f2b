"""Real model servers (the builtin server and MLServer) behind a real router, started
once per module and stopped at its end: what a user's Open Inference Protocol client
talks to, directly and through the router."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from rollout.platforms.local import nginx_front
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.supervisor import ProcessRecord
from rollout.registry.base import ModelVersion

SERVER_KINDS = ["builtin", pytest.param("mlserver", marks=pytest.mark.mlserver)]
# The router's two data planes (nginx_front): every protocol test runs through both.
NGINX_MISSING = nginx_front.missing()
DATA_PLANES = ["python", pytest.param("nginx", marks=pytest.mark.skipif(
    NGINX_MISSING is not None, reason=f"no nginx data plane here: {NGINX_MISSING}"))]


def _as_param(p: Any) -> Any:
    return p if hasattr(p, "values") else pytest.param(p)


STACKS = [pytest.param((k.values[0], p.values[0]), id=f"{k.values[0]}-{p.values[0]}", marks=[*k.marks, *p.marks])
          for k in map(_as_param, SERVER_KINDS) for p in map(_as_param, DATA_PLANES)]


def mlserver_available() -> bool:
    return (Path(sys.executable).parent / "mlserver").exists()


@dataclass
class Stack:
    """Two versions of iris (v1 good, v2 a good model that disagrees on a few rows)
    and one router in front of them."""

    kind: str
    v1: ProcessRecord
    v2: ProcessRecord
    router: ProcessRecord
    plane: str = "python"

    @property
    def router_grpc(self) -> str:
        return f"127.0.0.1:{self.router.extra_ports['grpc']}"

    def grpc_of(self, record: ProcessRecord) -> str:
        return f"127.0.0.1:{record.extra_ports['grpc']}"

    def configure(self, **config: Any) -> dict[str, Any]:
        body = {"backends": {"v1": self.v1.url, "v2": self.v2.url}, "stable": "v1", "candidate": None,
                "weight": 0, "mirror": 0, **config}
        grpc = {v: self.grpc_of(r) for v, r in (("v1", self.v1), ("v2", self.v2)) if r.extra_ports.get("grpc")}
        body.setdefault("grpc_backends", grpc)
        resp = requests.put(self.router.url + "/router/config", json=body, timeout=5)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def stats(self, window_s: int = 900) -> dict[str, Any]:
        resp = requests.get(self.router.url + "/router/stats", params={"window_s": window_s}, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())


def start_stack(home: Path, kind: str, iris_models: dict[str, Path], plane: str = "python") -> Stack:
    if kind == "mlserver" and not mlserver_available():
        pytest.skip("mlserver is not installed next to this Python")
    started: list[ProcessRecord] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(sv.start_server, home, ModelVersion("iris", v, str(iris_models[m])), kind, 90)
                       for v, m in (("v1", "good"), ("v2", "other"))]
            for f in futures:
                started.append(f.result())
        started.append(sv.start_router(home, "iris", 0, grpc_port=0,
                                       options={"backend_timeout_s": 30, "shadow_timeout_s": 5,
                                                "data_plane": plane}))
    except BaseException:
        for record in started:
            sv.stop(record, 2.0)
        raise
    v1, v2, router = started
    stack = Stack(kind, v1, v2, router, plane)
    stack.configure()
    return stack


def stop_stack(stack: Stack) -> None:
    for record in (stack.router, stack.v1, stack.v2):
        sv.stop(record, 3.0)


@pytest.fixture(scope="session", params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          iris_models: dict[str, Path]) -> Iterator[Stack]:
    kind, plane = request.param
    s = start_stack(tmp_path_factory.mktemp(f"stack-{kind}-{plane}"), kind, iris_models, plane)
    try:
        yield s
    finally:
        stop_stack(s)


GrpcCall = Callable[[grpcclient.InferenceServerClient], Any]


def client_outcome(client: Any, call: Callable[[Any], Any]) -> tuple[str, Any]:
    """What a tritonclient call gives: ("ok", its result) or ("error", the status it
    raised), so the same call can be compared directly and through the router. The
    client is closed after."""
    try:
        return "ok", call(client)
    except InferenceServerException as exc:
        return "error", exc.status()
    finally:
        client.close()


def grpc_outcome(call: GrpcCall, target: str) -> tuple[str, Any]:
    """``client_outcome`` of a tritonclient gRPC call at ``target``."""
    return client_outcome(grpcclient.InferenceServerClient(target), call)
