"""Time to resolve and materialise a model version, the first time and cached.

Side by side in one run, against a baseline doing the same transfer with the plain
tools (no rollout code):
  git-local   rollout: GitRegistry on a repository path       baseline: `git archive` of the version dir
  git-remote  rollout: GitRegistry on a file:// bare remote   baseline: `git clone --depth 1` + copy
  git-https   rollout: GitRegistry over http with basic auth   baseline: `git clone --depth 1` + copy, the
              (git http-backend, tests/fixtures/git_http.py;   credentials in the URL (what rollout refuses;
              credentials from username_env/password_env)      the same requests without the helper)
  mlflow      rollout: MlflowRegistry on a real mlflow server baseline: mlflow.artifacts.download_artifacts
"first" is a fresh rollout home (clone / download), "cached" a new registry object on
the same home (what the next `rollout start` does). Each figure is the median of
--repeat runs, with min-max; ratios are rollout / baseline.

Run: .venv/bin/python bench/registry_materialise.py [--repeat 5] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollout.demo.models import make_good_model  # noqa: E402
from rollout.registry.git import GitRegistry, publish_version  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f}, n={len(xs)})"


def git_case(root: Path, url: str, repeat: int, remote: bool, baseline_url: str | None = None,
             **options: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"first": [], "cached": [], "baseline": []}
    tag = f"{remote}-{len(options)}"
    for i in range(repeat):
        home = root / f"home-{tag}-{i}"
        out["first"].append(timed(lambda: GitRegistry(url, "main", cache_dir=home, **options).resolve("iris:v2")))
        out["cached"].append(timed(lambda: GitRegistry(url, "main", cache_dir=home, **options).resolve("iris:v2")))
        dest = root / f"base-{tag}-{i}"
        if remote:
            out["baseline"].append(timed(lambda: subprocess.run(
                ["git", "clone", "-q", "--depth", "1", "--branch", "main", baseline_url or url, str(dest)],
                check=True) or shutil.copytree(dest / "models/iris/v2", root / f"copy-{tag}-{i}")))
        else:
            dest.mkdir()
            out["baseline"].append(timed(lambda: subprocess.run(
                f"git -C {url} archive main models/iris/v2 | tar -x -C {dest}", shell=True, check=True)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_case(root: Path, model_dir: Path, repeat: int) -> dict[str, list[float]]:
    import logging

    import mlflow
    import mlflow.artifacts
    import mlflow.sklearn
    import requests
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from rollout.registry.mlflow import MlflowRegistry

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.sqlite", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(400):
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.25)
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        mlflow.set_tracking_uri(url)
        X, y = load_iris(return_X_y=True)
        with mlflow.start_run():
            mlflow.log_metric("accuracy", 0.95)
            mlflow.sklearn.log_model(LogisticRegression(max_iter=300).fit(X, y), name="model",
                                     registered_model_name="iris", input_example=X[:2])
        out: dict[str, list[float]] = {"first": [], "cached": [], "baseline": []}
        for i in range(repeat):
            home = root / f"mlflow-home-{i}"

            def resolve_and_materialise() -> None:
                reg = MlflowRegistry(url, home)
                reg.materialise(reg.resolve("iris:1"))

            out["first"].append(timed(resolve_and_materialise))
            out["cached"].append(timed(resolve_and_materialise))
            client = mlflow.MlflowClient(url)
            dest = root / f"mlflow-base-{i}"
            dest.mkdir()
            out["baseline"].append(timed(lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri("iris", "1"), dst_path=str(dest),
                tracking_uri=url)))
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rollout-bench-registry-"))
    try:
        model = make_good_model(root / "model", seed=0)
        repo = root / "registry"
        publish_version(repo, "iris", "v1", model)
        publish_version(repo, "iris", "v2", model)
        bare = root / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        print(f"model: {size / 1024:.1f} KiB; repeat {args.repeat}; machine: {os.cpu_count()} cores")
        cases = {"git-local": git_case(root, str(repo), args.repeat, remote=False),
                 "git-remote": git_case(root, bare.as_uri(), args.repeat, remote=True)}
        from tests.fixtures.git_http import git_http_server

        os.environ["BENCH_GIT_USER"], os.environ["BENCH_GIT_TOKEN"] = "bench", "bench-token-4f1d"
        with git_http_server(root, "bench", "bench-token-4f1d") as server:
            url = server.url("remote.git")
            cases["git-https"] = git_case(root, url, args.repeat, remote=True,
                                          baseline_url=url.replace("://", "://bench:bench-token-4f1d@"),
                                          username_env="BENCH_GIT_USER", password_env="BENCH_GIT_TOKEN")
        if not args.no_mlflow:
            cases["mlflow"] = mlflow_case(root, model, args.repeat)
        for name, r in cases.items():
            base = statistics.median(r["baseline"])
            print(f"{name:<10} first  {summary(r['first'])}  ratio to baseline {statistics.median(r['first']) / base:.2f}")
            print(f"{'':<10} cached {summary(r['cached'])}  ratio to baseline {statistics.median(r['cached']) / base:.2f}")
            print(f"{'':<10} baseline {summary(r['baseline'])}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
