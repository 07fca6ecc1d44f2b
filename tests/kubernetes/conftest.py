"""Fixtures for the Kubernetes platform: a fake API server on 127.0.0.1 that the official
client talks to over HTTP, a fake kubelet that makes Deployments ready, and a kubeconfig
file pointing at it. Everything is stopped by the test that started it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.kubernetes.fake_apiserver import FakeApiServer, FakeCluster, FakeKubelet

NAMESPACE = "models"


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    cluster = FakeCluster()
    cluster.create_namespace(NAMESPACE)
    with FakeApiServer(cluster) as server:
        yield server


@pytest.fixture
def cluster(apiserver: FakeApiServer) -> FakeCluster:
    return apiserver.cluster


@pytest.fixture
def kubelet(cluster: FakeCluster) -> Iterator[FakeKubelet]:
    k = FakeKubelet(cluster, delay_s=0.02).start()
    yield k
    k.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(apiserver.kubeconfig(NAMESPACE)))
    return path
