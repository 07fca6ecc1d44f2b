"""Everything the kind e2e workflow (.github/workflows/e2e-kind.yml) needs that is not
the cluster: three iris model versions and a git registry of them, the model files for
the in-cluster model store, and the rollout spec. Run by the workflow and by
tests/kubernetes/test_e2e_kind_pieces.py, so what can be checked here is.

- v1, v2: working sklearn classifiers (4 features);
- v3: a classifier fitted on 5 features: MLServer loads it, and every request with the
  4 iris features fails in predict with HTTP 500, so its measured error rates (at the
  server and at the gateway) roll it back.

Usage: python -m tests.kubernetes.e2e.prepare OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression

from rollout.demo.models import make_good_model
from rollout.registry.git import publish_version

NAMESPACE = "models"
STORE = f"http://model-store.{NAMESPACE}.svc.cluster.local:8000"
HOST = "iris.example.com"


def _five_feature_model(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] > 0).astype(int)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(x, y), directory / "model.joblib")
    return directory


# Both measured through Prometheus: at the model server (rollout's PodMonitor) and at the
# gateway (Envoy Gateway's per-backend clusters, the Envoy PodMonitor in cluster.yaml).
METRICS = {
    "error-rate": "pack:mlserver/error_rate",
    "gateway-error-rate": "pack:gateway-api/error_rate",
}


def spec(registry: Path, prometheus_url: str = "http://127.0.0.1:9090") -> dict:
    return {
        "model": "iris",
        "registry": {"type": "git", "url": str(registry)},
        "platform": {"type": "kubernetes", "namespace": NAMESPACE, "router": "gateway-api",
                     "gateway": {"name": "e2e"}, "hosts": [HOST], "replicas": 1, "ready_timeout_s": 600,
                     "pod_monitor": True},
        "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0},
        "analysis": {"interval_s": 15, "duration_s": 120, "prometheus": {"url": prometheus_url}, "metrics": [
            {"name": name, "provider": "prometheus", "query": query, "judge": {"type": "threshold", "max": 0.05}}
            for name, query in METRICS.items()]},
    }


def prepare(out: Path) -> Path:
    """Writes out/models/<v>/model.joblib (the store's files), out/registry, out/rollout.yaml."""
    files = out / "models"
    make_good_model(files / "v1", seed=0)
    make_good_model(files / "v2", seed=1)
    _five_feature_model(files / "v3")
    registry = out / "registry"
    for v in ("v1", "v2", "v3"):
        publish_version(registry, "iris", v, files / v, metadata={"storage_uri": f"{STORE}/{v}/model.joblib"})
    path = out / "rollout.yaml"
    path.write_text(yaml.safe_dump(spec(registry), sort_keys=False))
    return path


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]).resolve()))
