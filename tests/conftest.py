"""Shared fixtures: tiny real iris models on disk, and local processes that are always
stopped by the test that started them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from rollout.demo.models import make_bad_model, make_good_model
from rollout.registry.base import ModelVersion


@pytest.fixture(scope="session")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories (each with model.joblib), made once per session:
    ``good`` and ``other`` (two good models that disagree on a few inputs),
    ``broken`` (every predict raises), ``slow`` (correct, +1.5 s per predict)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "good": make_good_model(root / "good", seed=0),
        "other": make_good_model(root / "other", seed=1),
        "broken": make_bad_model(root / "broken", error_rate=1.0),
        "slow": make_bad_model(root / "slow", error_rate=0.0, extra_latency_ms=1500),
    }


@pytest.fixture
def iris_version(iris_models: dict[str, Path]) -> Callable[[str, str], ModelVersion]:
    """``iris_version("v2", "other")`` -> a ModelVersion of model iris from that dir."""

    def make(version: str, kind: str = "good") -> ModelVersion:
        return ModelVersion(name="iris", version=version, uri=str(iris_models[kind]))

    return make


@pytest.fixture
def local_home(tmp_path: Path) -> Iterator[Path]:
    """A rollout home whose local processes are all stopped when the test ends,
    whatever state the test left them in."""
    home = tmp_path / "home"
    yield home
    from rollout.platforms.local import supervisor as sv
    from rollout.platforms.local.daemon import stop_daemon

    stop_daemon(home)  # a controller daemon (platform.controller: true, --daemon) first: it would restart the rest

    for model_dir in (home / "local").glob("*"):
        router = sv.read_record(sv.router_record_path(home, model_dir.name))
        if router is not None:
            sv.stop(router, 2.0)
        for record in sv.version_records(home, model_dir.name):
            sv.stop(record, 2.0)
