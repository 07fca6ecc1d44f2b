"""The built-in V2 server speaks the protocol the way MLServer's sklearn runtime does."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.supervisor import ProcessRecord
from rollout.registry.base import ModelVersion

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, iris_models: dict[str, Path]) -> Iterator[ProcessRecord]:
    home = tmp_path_factory.mktemp("v2home")
    record = sv.start_server(home, ModelVersion("iris", "v1", str(iris_models["good"])), sv.BUILTIN, 20)
    yield record
    sv.stop(record, 2.0)


def infer(server: ProcessRecord, body: dict, path: str = "/v2/models/iris/infer") -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=5)


def test_flat_and_nested_data_give_the_same_predict_output(server: ProcessRecord) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    flat = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": sum(rows, [])}]}
    nested = {"id": "r1", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": rows}]}

    a, b = infer(server, flat).json(), infer(server, nested, "/v2/models/iris/versions/v1/infer").json()

    assert a["outputs"] == b["outputs"]
    assert a["outputs"][0] == {"name": "predict", "shape": [2, 1], "datatype": "INT64",
                               "parameters": {"content_type": "np"}, "data": [0, 2]}
    assert b["id"] == "r1" and b["model_name"] == "iris" and b["model_version"] == "v1"


def test_predict_proba_on_request(server: ProcessRecord) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}],
            "outputs": [{"name": "predict_proba"}]}
    [out] = infer(server, body).json()["outputs"]
    assert out["shape"] == [1, 3] and out["datatype"] == "FP64" and abs(sum(out["data"]) - 1) < 1e-9


def test_bad_requests_are_4xx_with_a_message(server: ProcessRecord) -> None:
    wrong_shape = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    assert infer(server, wrong_shape).status_code == 400
    assert "shape" in infer(server, wrong_shape).json()["error"]
    assert infer(server, {"inputs": []}).status_code == 400
    assert infer(server, wrong_shape, "/v2/models/wine/infer").status_code == 404
    assert infer(server, wrong_shape, "/v2/models/iris/versions/v9/infer").status_code == 404


def test_health_and_metadata(server: ProcessRecord) -> None:
    assert requests.get(server.url + "/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(server.url + "/v2/models/iris/ready", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/models/iris", timeout=5).json()["versions"] == ["v1"]


def test_a_model_that_raises_is_a_500_with_the_error(tmp_path: Path, iris_models: dict[str, Path]) -> None:
    record = sv.start_server(tmp_path, ModelVersion("iris", "bad", str(iris_models["broken"])), sv.BUILTIN, 20)
    try:
        resp = infer(record, {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]})
    finally:
        sv.stop(record, 2.0)
    assert resp.status_code == 500 and "injected failure" in resp.json()["error"]


def test_server_metadata_and_model_metadata_with_inputs_and_outputs(server: ProcessRecord) -> None:
    meta = requests.get(server.url + "/v2", timeout=5).json()
    assert meta["name"] == "rollout-v2server" and "binary_tensor_data" in meta["extensions"]
    model = requests.get(server.url + "/v2/models/iris/versions/v1", timeout=5).json()
    assert model["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["predict", "predict_proba"]
    assert model["outputs"][1]["shape"] == [-1, 3]


def test_binary_tensor_extension_both_ways(server: ProcessRecord) -> None:
    import json
    import struct

    rows = [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
    raw_in = struct.pack("<8d", *rows)
    header = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(raw_in)}}],
                         "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]}).encode()
    resp = requests.post(server.url + "/v2/models/iris/infer", data=header + raw_in, timeout=5,
                         headers={"Inference-Header-Content-Length": str(len(header))})

    assert resp.status_code == 200
    n = int(resp.headers["Inference-Header-Content-Length"])
    answer, blob = json.loads(resp.content[:n]), resp.content[n:]
    [out] = answer["outputs"]
    assert out["parameters"]["binary_data_size"] == len(blob) == 16 and "data" not in out
    assert list(struct.unpack("<2q", blob)) == [0, 2]


@pytest.mark.parametrize("header", ["abc", "-1", "999999"])
def test_a_bad_binary_header_is_400_naming_it(server: ProcessRecord, header: str) -> None:
    resp = requests.post(server.url + "/v2/models/iris/infer", data=b"{}", timeout=5,
                         headers={"Inference-Header-Content-Length": header})
    assert resp.status_code == 400 and "Inference-Header-Content-Length" in resp.json()["error"]


def test_a_body_over_the_limit_is_413(tmp_path: Path, iris_models: dict[str, Path]) -> None:
    import subprocess
    import sys

    port = sv.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rollout.platforms.local.v2server", "--model-dir",
                             str(iris_models["good"]), "--name", "iris", "--version", "v1", "--port", str(port),
                             "--body-limit-bytes", "2048"], env=sv.child_env(), start_new_session=True)
    try:
        sv.wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready"], 20, "v2server", tmp_path / "none.log")
        resp = requests.post(f"http://127.0.0.1:{port}/v2/models/iris/infer", data=b"x" * 5000, timeout=5)
    finally:
        sv.kill_group(proc.pid, None, 2.0)
        proc.wait()
    assert resp.status_code == 413 and "2048" in resp.json()["error"]
