"""The MLflow Model Registry against a real `mlflow server` (sqlite) on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest
import yaml

from rollout import app as wiring
from rollout.errors import NotFound, RegistryError
from rollout.registry.base import Outcome
from rollout.registry.mlflow import MlflowRegistry
from rollout.spec import parse_spec
from tests.registry.conftest import quick_canary_spec
from tests.integration.conftest import cli_env

pytestmark = [pytest.mark.timeout(300), pytest.mark.mlflow]


@pytest.fixture(scope="module")
def fraud(mlflow_server):
    """fraud v1 (accuracy 0.95), v2 (0.96), v3 (0.80: regressed); alias champion -> 2."""
    versions = [mlflow_server.register("fraud", acc, seed=i) for i, acc in enumerate([0.95, 0.96, 0.80])]
    MlflowRegistry(mlflow_server.url, Path("/nonexistent")).client.set_registered_model_alias("fraud", "champion", "2")
    return versions


def test_resolves_by_number_alias_and_latest(mlflow_server, fraud, tmp_path):
    reg = MlflowRegistry(mlflow_server.url, tmp_path)
    assert fraud == ["1", "2", "3"]
    v1 = reg.resolve("fraud:1")
    assert (v1.version, v1.uri, v1.runtime) == ("1", "models:/fraud/1", "mlflow")
    assert v1.eval_metrics == {"accuracy": 0.95}
    assert reg.resolve("fraud@champion").version == "2"
    assert reg.resolve("fraud:latest").version == "3"
    assert reg.list("fraud") == ["1", "2", "3"]
    assert reg.aliases("fraud") == {"champion": "2"}


def test_unknown_model_version_and_alias_list_what_exists(mlflow_server, fraud, tmp_path):
    reg = MlflowRegistry(mlflow_server.url, tmp_path)
    with pytest.raises(NotFound, match=r"model 'nope' is not in the MLflow registry .*; models: .*fraud"):
        reg.resolve("nope:1")
    with pytest.raises(NotFound, match=r"fraud:9 is not in the MLflow registry; versions: 1, 2, 3"):
        reg.resolve("fraud:9")
    with pytest.raises(NotFound, match=r"fraud@staging: no such alias; aliases: champion \(2\)"):
        reg.resolve("fraud@staging")


def test_materialise_downloads_once_and_reuses_the_cache(mlflow_server, fraud, tmp_path):
    reg = MlflowRegistry(mlflow_server.url, tmp_path)
    mv = reg.resolve("fraud:2")
    first = reg.materialise(mv)
    assert (first / "MLmodel").is_file() and (first / "model.skops").is_file()
    stamp = (first / "MLmodel").stat().st_mtime_ns
    again = MlflowRegistry(mlflow_server.url, tmp_path).materialise(mv)
    assert again == first and (again / "MLmodel").stat().st_mtime_ns == stamp
    assert str(first).startswith(str(tmp_path))


def test_record_moves_the_alias_and_writes_tags(mlflow_server, fraud, tmp_path):
    reg = MlflowRegistry(mlflow_server.url, tmp_path, alias="prod-test")
    reg.record(Outcome("fraud", "promoted", serving="2", previous="1", candidate="2", rollout_id="r1", at=0.0))
    assert reg.aliases("fraud")["prod-test"] == "2"
    tags = reg.client.get_model_version("fraud", "2").tags
    assert tags["rollout.id"] == "r1" and tags["rollout.outcome"] == "promoted"
    assert tags["rollout.previous_version"] == "1" and tags["rollout.time"] == "1970-01-01T00:00:00Z"
    reg.record(Outcome("fraud", "rolled_back", serving="1", previous="2", candidate="2", rollout_id="r2", at=0.0))
    assert reg.aliases("fraud")["prod-test"] == "1"
    assert reg.client.get_model_version("fraud", "2").tags["rollout.outcome"] == "rolled_back"


def test_unreachable_registry_is_a_clear_error_quickly(tmp_path):
    from tests.fixtures.prometheus import free_port

    reg = MlflowRegistry(f"http://127.0.0.1:{free_port()}", tmp_path, max_retries=0, timeout_s=2)
    with pytest.raises(RegistryError, match=r"MLflow at http://127.0.0.1:\d+ is unreachable"):
        reg.resolve("fraud:1")


def _spec(tmp_path: Path, url: str, model: str, **registry) -> Path:
    return quick_canary_spec(tmp_path, model, {"type": "mlflow", "tracking_uri": url, "max_retries": 0, **registry},
                             server="mlserver", ready_timeout_s=300)  # MLflow runtime start-up on a busy 2-core CI machine


def _rollout(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rollout", *args], env=cli_env(home), capture_output=True,
                          text=True, timeout=240, cwd=home.parent)


def test_unreachable_registry_exits_1_and_nothing_moves(tmp_path):
    from tests.fixtures.prometheus import free_port

    home = tmp_path / "home"
    done = _rollout("start", "fraud:1", "-f", str(_spec(tmp_path, f"http://127.0.0.1:{free_port()}", "fraud")),
                    home=home)
    assert done.returncode == 1, done.stderr
    assert "is unreachable" in done.stderr and "Traceback" not in done.stderr
    assert not list(home.glob("state/*.json")) and not (home / "local").exists()


def test_the_token_never_appears_in_any_output(mlflow_server, fraud, tmp_path):
    secret = "tok-3f9c1d2e-never-print-me"
    home = tmp_path / "home"
    spec = _spec(tmp_path, mlflow_server.url, "fraud", token_env="FRAUD_MLFLOW_TOKEN")
    env = {**cli_env(home), "FRAUD_MLFLOW_TOKEN": secret}
    listed = subprocess.run([sys.executable, "-m", "rollout", "registry", "list", "fraud", "-f", str(spec),
                             "-o", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    missing = subprocess.run([sys.executable, "-m", "rollout", "registry", "list", "fraud", "-f", str(spec)],
                             env={k: v for k, v in env.items() if k != "FRAUD_MLFLOW_TOKEN"},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "FRAUD_MLFLOW_TOKEN is not set" in missing.stderr
    for out in (listed.stdout, listed.stderr, missing.stdout, missing.stderr):
        assert secret not in out
    assert all(secret not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_a_bad_token_is_refused_by_an_authenticating_mlflow_and_never_shown(mlflow_auth_server, tmp_path):
    secret = "bad-token-8d2f77a1-do-not-print"
    home = tmp_path / "home"
    spec = _spec(tmp_path, mlflow_auth_server.url, "fraud", token_env="FRAUD_MLFLOW_TOKEN")
    env = {**cli_env(home), "FRAUD_MLFLOW_TOKEN": secret}
    outputs = []
    for args in (["start", "fraud:1", "-f", str(spec)], ["registry", "list", "fraud", "-f", str(spec)]):
        done = subprocess.run([sys.executable, "-m", "rollout", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "not authorised (UNAUTHENTICATED); check the token" in done.stderr
        assert "Traceback" not in done.stderr
        outputs += [done.stdout, done.stderr]
    assert all(secret not in out for out in outputs)
    assert all(secret not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert not list(home.glob("state/*.json")) and not (home / "local").exists()  # nothing moved


def test_registry_list_shows_versions_aliases_metrics(mlflow_server, fraud, tmp_path):
    import json

    done = _rollout("registry", "list", "fraud", "-f", str(_spec(tmp_path, mlflow_server.url, "fraud")), "-o", "json",
                    home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {r["version"]: r for r in data["versions"]}
    assert rows["2"]["aliases"][:1] == ["champion"] and rows["3"]["eval_metrics"] == {"accuracy": 0.8}
    assert data["stable"] == {}


@pytest.mark.mlserver
def test_canary_of_an_mlflow_model_promotes_moves_the_alias_and_rollback_moves_it_back(
        mlflow_server, tmp_path, local_home):
    if importlib.util.find_spec("mlserver_mlflow") is None:  # looked up, not imported (protobuf clash)
        pytest.skip("the mlflow extra is not installed")
    for i, acc in enumerate([0.95, 0.96, 0.80]):
        mlflow_server.register("churn", acc, seed=i)
    spec = parse_spec(yaml.safe_load(_spec(tmp_path, mlflow_server.url, "churn",
                                           gate={"accuracy": {"max_decrease": 0.01}}).read_text()))
    registry = wiring.make_registry(spec, local_home)
    platform = wiring.make_platform(spec, local_home)

    def engine(command: str):
        return wiring.build_engine(spec, local_home, command, [], platform=platform)

    ms = engine("start").start(registry.resolve("churn:1"))
    assert ms.stable.version == "1" and registry.aliases("churn")["production"] == "1"
    ms = engine("start").start(registry.resolve("churn:2"))
    assert ms.history[0].phase.value == "Promoted" and ms.stable.version == "2", ms.history[0].reason
    assert registry.aliases("churn")["production"] == "2"
    tags = registry.client.get_model_version("churn", "2").tags
    assert tags["rollout.outcome"] == "promoted" and tags["rollout.previous_version"] == "1"
    assert tags["rollout.id"] == ms.history[0].id
    import requests

    answer = requests.post(f"{platform.endpoint()}/v2/models/churn/infer", timeout=10, json={"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]})
    assert answer.status_code == 200 and answer.json()["model_version"] == "2", answer.text

    refused = engine("start").start(registry.resolve("churn:3"))
    assert refused.rollout.phase.value == "Rejected" and refused.stable.version == "2"
    assert "accuracy: 3 0.8 vs stable 2 0.96 (-0.16; max_decrease 0.01)" in refused.rollout.reason
    assert refused.history[0].id == refused.rollout.id
    assert platform.running_versions() == ["2"] and platform.get_traffic().candidate is None

    ms = engine("rollback").rollback()
    assert ms.stable.version == "1" and registry.aliases("churn")["production"] == "1"
    assert registry.client.get_model_version("churn", "1").tags["rollout.outcome"] == "rolled_back"
