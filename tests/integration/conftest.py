"""Fixtures for whole rollouts on the local platform: a real git registry, spec files,
the CLI as a subprocess, and the engine in-process with an event recorder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout import app as wiring
from rollout.registry.git import GitRegistry, publish_version
from rollout.spec import RolloutSpec, load_spec

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST_ANALYSIS = {
    "interval_s": 0.5,
    "duration_s": 1.5,
    "metrics": [{"name": "error-rate", "query": "error_rate",
                 # lifecycle, not statistics: a handful of requests on purpose (min_requests: 0)
                 "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}],
}


@pytest.fixture
def registry(tmp_path: Path, iris_models: dict[str, Path]) -> Path:
    """iris v1 (good), v2 (good, a different fit), v3 (broken: every predict fails),
    v4 (slow: +1.5 s per predict)."""
    repo = tmp_path / "registry"
    for version, kind in [("v1", "good"), ("v2", "other"), ("v3", "broken"), ("v4", "slow")]:
        publish_version(repo, "iris", version, iris_models[kind])
    return repo


@pytest.fixture
def make_spec(tmp_path: Path, registry: Path) -> Callable[..., Path]:
    """Write a spec file: a fast local canary unless overridden."""
    count = iter(range(1000))

    def make(strategy: dict[str, Any] | None = None, analysis: dict[str, Any] | None = None,
             platform: dict[str, Any] | None = None, **extra: Any) -> Path:
        spec = {
            "model": "iris",
            "registry": {"type": "git", "url": str(registry)},
            "platform": {"type": "local", "server": "builtin", "ready_timeout_s": 30, **(platform or {})},
            "strategy": strategy or {"type": "canary", "weights": [30, 60]},
            "analysis": analysis if analysis is not None else FAST_ANALYSIS,
            **extra,
        }
        path = tmp_path / f"rollout-{next(count)}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return make


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["ROLLOUT_HOME"] = str(home)
    return env


@pytest.fixture
def cli(local_home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `rollout ...` as a user would, in a subprocess, against the test's home."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rollout", *args], env=cli_env(local_home),
                              capture_output=True, text=True, timeout=timeout, cwd=local_home.parent)

    return run


@pytest.fixture
def cli_background(local_home: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    procs: list[subprocess.Popen] = []

    def spawn(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "rollout", *args], env=cli_env(local_home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=local_home.parent)
        procs.append(proc)
        return proc

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


@dataclass
class Rig:
    """iris:v1 serving on the local platform; candidates are rolled out in-process, so
    a test can pass listeners and services (a gate, say) and read the events' times."""

    spec: RolloutSpec
    home: Path
    registry: GitRegistry
    platform: Any

    def start(self, version: str, *listeners: Any, **services: Any) -> Any:
        engine = wiring.build_engine(self.spec, self.home, "start", list(listeners), platform=self.platform, **services)
        return engine.start(self.registry.resolve(f"iris:{version}"))

    def infer_url(self, preview: bool = False) -> str:
        base = self.platform.preview_endpoint() if preview else self.platform.endpoint()
        return f"{base}/v2/models/iris/infer"


def serving_v1(spec_path: Path, home: Path) -> Rig:
    spec = load_spec(spec_path)
    rig = Rig(spec, home, GitRegistry(spec.registry.url, cache_dir=home / "registry"), wiring.make_platform(spec, home))
    rig.start("v1")
    return rig


@dataclass
class Recorder:
    """Collects engine events with their wall-clock time."""

    events: list[tuple[float, str, str, int | None]] = field(default_factory=list)

    def __call__(self, event: Any, ms: Any) -> None:
        self.events.append((time.time(), event.kind, event.message, event.step_index))

    def times(self, kind: str) -> list[float]:
        return [t for t, k, _, _ in self.events if k == kind]


