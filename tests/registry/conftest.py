"""A real MLflow tracking server (sqlite backend, local artifact root) on 127.0.0.1,
started once per session (it takes 10-15 s), and helpers to register real sklearn
versions in it. Skipped where mlflow is not installed (install rollout[mlflow])."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'rollout[mlflow]')")


@dataclass
class MlflowServer:
    url: str
    root: Path

    def register(self, model: str, accuracy: float | None, seed: int = 0, **metrics: float) -> str:
        """Train a small iris classifier, log it with its metrics, register it; returns the version."""
        import mlflow
        import mlflow.sklearn
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        from rollout.demo.mlflow_server import pinned_requirements

        X, y = load_iris(return_X_y=True)
        mlflow.set_tracking_uri(self.url)
        with mlflow.start_run():
            clf = LogisticRegression(max_iter=300, C=1.0 + seed).fit(X, y)
            if accuracy is not None:
                mlflow.log_metric("accuracy", accuracy)
            for k, v in metrics.items():
                mlflow.log_metric(k, v)
            # pinned, not inferred: inference loads the model in a subprocess (5-15 s a version)
            info = mlflow.sklearn.log_model(clf, name="model", registered_model_name=model, input_example=X[:2],
                                            pip_requirements=pinned_requirements("scikit-learn", "skops", "numpy",
                                                                                 "scipy", "pandas"))
        return str(info.registered_model_version)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    yield from _serve(tmp_path_factory.mktemp("mlflow"), [], {})


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """MLflow with its basic-auth app: every request without valid credentials is 401."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] is not installed")
    root = tmp_path_factory.mktemp("mlflow-auth")
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root}/auth.sqlite\n"
        "admin_username = admin\nadmin_password = only-for-rollout-tests-7c1e\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    yield from _serve(root, ["--app-name", "basic-auth"],
                      {"MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"})


def _serve(root: Path, extra: list[str], env: dict[str, str]) -> Iterator[MlflowServer]:
    from rollout.demo.mlflow_server import mlflow_server

    with mlflow_server(root, tuple(extra), {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **env},
                       ready_timeout_s=180) as url:
        yield MlflowServer(url, root)


def quick_canary_spec(tmp_path: Path, model: str, registry: dict, server: str = "builtin",
                      ready_timeout_s: float = 30) -> Path:
    """A local canary spec file (50%, a short pause, no metrics) with ``registry``: the
    registry tests are about what is resolved and recorded, not about analysis."""
    spec = {"model": model, "registry": registry,
            "platform": {"type": "local", "server": server, "ready_timeout_s": ready_timeout_s},
            "strategy": {"type": "canary", "steps": [{"set_weight": 50}, {"pause": {"duration_s": 0.2}}],
                         "scale_down_delay_s": 0},
            "analysis": {"metrics": []}}
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
