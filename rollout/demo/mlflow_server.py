"""`rollout demo --registry mlflow`: the demo's three iris versions in a real MLflow
Model Registry — a local `mlflow server` (sqlite backend, local artifact root) on
127.0.0.1, started here and stopped when the demo ends.

v1 and v2 are good models, v3 the demo's bad one (fails a share of requests, slower);
each is logged with an accuracy metric, so `registry.gate` can be shown too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from rollout.errors import RegistryError

READY_TIMEOUT_S = 120.0
# MLflow 3's server also starts a job runner (for its GenAI jobs) with seven huey consumer
# processes, each importing mlflow: seconds of CPU at start, and they hold up SIGTERM for
# up to the 15 s below. The registry and runs, all the demo and rollout use, work without.
JOBS_OFF = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mlflow_server(root: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                  ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """A local MLflow tracking server; yields its URL; always stopped (the demo and the
    registry tests' fixtures both use it)."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        raise RegistryError(f"{exe} not found: install rollout[mlflow] for `rollout demo --registry mlflow`")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(root / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.sqlite",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", *extra_args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
                            env={**os.environ, **JOBS_OFF, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RegistryError(f"mlflow server exited; see {root / 'mlflow-server.log'}")
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RegistryError(f"mlflow server not ready after {ready_timeout_s:g}s; see {root / 'mlflow-server.log'}")
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def pinned_requirements(*dists: str) -> list[str]:
    """``name==installed version`` of each distribution, for ``log_model(pip_requirements=...)``.

    Without it MLflow infers a model's requirements by loading the model in a fresh
    subprocess to see what it imports: 5-15 s a version on a busy 2-core machine, to find
    the packages named here (plus whatever that subprocess happened to import). A
    distribution that is not installed as such (rollout run from a checkout) is named
    without a version."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(dist: str) -> str:
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            return dist

    return [pinned(d) for d in dists]


def register_demo_versions(url: str, bad_error_rate: float, bad_extra_latency_ms: float,
                           echo: Callable[[str], None]) -> None:
    """Log and register iris v1, v2 (good) and v3 (bad) with an accuracy metric each."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris

    from rollout.demo.models import FlakyClassifier, _fit_iris

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # the demo prints its own lines
    X, y = load_iris(return_X_y=True)
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("rollout-demo")
    # what unpickling needs; the bad version's FlakyClassifier is rollout's own class
    needs = ("scikit-learn", "cloudpickle", "numpy", "scipy", "pandas")
    for seed, make, extra in [(1, lambda m: m, ()), (2, lambda m: m, ()),
                              (3, lambda m: FlakyClassifier(m, bad_error_rate, bad_extra_latency_ms), ("rollout",))]:
        inner = _fit_iris(seed)
        model = make(inner)
        with mlflow.start_run():
            mlflow.log_metric("accuracy", float((inner.predict(X) == y).mean()))
            mlflow.sklearn.log_model(model, name="model", registered_model_name="iris",
                                     serialization_format="cloudpickle",
                                     signature=infer_signature(X, inner.predict(X)),
                                     pip_requirements=pinned_requirements(*needs, *extra))
    echo(f"registry  MLflow at {url}: iris 1, 2 good; 3 fails {bad_error_rate:.0%} of requests, "
         f"+{bad_extra_latency_ms:.0f} ms")
