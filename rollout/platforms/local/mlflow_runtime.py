"""Serve one MLflow model directory with MLServer's MLflow runtime (mlserver-mlflow).

The local platform starts this for versions whose runtime is ``mlflow`` (e.g. from the
MLflow Model Registry). It writes MLServer's settings into a private directory and
replaces itself with ``mlserver start``, so the supervisor's pid is MLServer's:

    python -m rollout.platforms.local.mlflow_runtime --port 8080 --model-dir DIR --name iris --version 3

The model is loaded by MLServer in this child process, never by the rollout CLI.
``parallel_workers: 0`` as for the sklearn runtime (see ENVIRONMENT.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args(argv)
    exe = Path(sys.executable).parent / "mlserver"
    if not exe.exists():
        sys.exit(f"mlflow runtime: {exe} not found; install rollout[mlserver,mlflow]")
    if importlib.util.find_spec("mlserver_mlflow") is None:
        sys.exit("mlflow runtime: mlserver-mlflow is not installed; install rollout[mlflow]")
    runtime = Path(tempfile.mkdtemp(prefix=f"rollout-mlflow-{args.name}-{args.version}-"))
    settings = {"host": "127.0.0.1", "http_port": args.port, "grpc_port": _free_port(),
                "metrics_port": _free_port(), "parallel_workers": 0}
    model = {"name": args.name, "implementation": "mlserver_mlflow.MLflowRuntime",
             "parameters": {"uri": str(Path(args.model_dir).resolve()), "version": args.version}}
    (runtime / "settings.json").write_text(json.dumps(settings))
    (runtime / "model-settings.json").write_text(json.dumps(model))
    os.chdir(runtime)
    os.execv(str(exe), [str(exe), "start", str(runtime)])


if __name__ == "__main__":
    main()
