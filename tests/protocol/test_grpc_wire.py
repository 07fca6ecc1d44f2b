"""The router's two-field protobuf reader agrees with the generated classes of the
Open Inference Protocol that tritonclient ships (fields, order, merge semantics)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from rollout.platforms.local.grpc_proxy import compare_outputs
from rollout.platforms.local.wire import WireError, infer_outputs, model_and_version

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(30)]


def infer_request(name: str, version: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, model_version=version, id="req-1")
    tensor = req.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
    tensor.parameters["binary_data_size"].int64_param = 64
    req.raw_input_contents.append(bytes(range(64)))
    req.parameters["priority"].int64_param = 3
    return req


@pytest.mark.parametrize(("name", "version"), [("iris", "v2"), ("iris", ""), ("fraud-model", "2026.11.3"), ("é", "ü")])
def test_reads_name_and_version_of_each_model_request(name: str, version: str) -> None:
    for message in (infer_request(name, version), pb.ModelMetadataRequest(name=name, version=version),
                    pb.ModelReadyRequest(name=name, version=version)):
        assert model_and_version(message.SerializeToString()) == (name, version)


def test_fields_in_any_order_and_the_last_occurrence_wins_as_in_protobuf() -> None:
    tail = infer_request("iris", "v1").SerializeToString()
    later = pb.ModelInferRequest(model_version="v7").SerializeToString()
    merged = tail + later  # protobuf's own parse of a concatenation merges: last scalar wins
    assert pb.ModelInferRequest.FromString(merged).model_version == "v7"
    assert model_and_version(merged) == ("iris", "v7")


@pytest.mark.parametrize("garbage", [b"\x0a\x10short", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0b"])
def test_malformed_messages_are_a_wire_error(garbage: bytes) -> None:
    with pytest.raises(WireError):
        model_and_version(garbage)
    with pytest.raises(WireError):  # a shadow's answer cut short is an error, never a partial comparison
        infer_outputs(garbage)


def answer(version: str, rid: str, values: list[float], datatype: str = "FP64", raw: bool = True) -> bytes:
    resp = pb.ModelInferResponse(model_name="iris", model_version=version, id=rid)
    out = resp.outputs.add(name="predict_proba", datatype=datatype, shape=[1, len(values)])
    dtype = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8"}[datatype]
    if raw:
        resp.raw_output_contents.append(np.array(values, dtype=dtype).tobytes())
    elif datatype == "FP64":
        out.contents.fp64_contents.extend(values)
    elif datatype == "FP32":
        out.contents.fp32_contents.extend(values)
    else:
        out.contents.int64_contents.extend(int(v) for v in values)
    return resp.SerializeToString()


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
def test_reads_outputs_as_the_generated_classes_do(raw: bool, datatype: str) -> None:
    message = answer("v1", "a", [0.25, -3.0, 7.5] if datatype != "INT64" else [1, -2, 3], datatype, raw)
    parsed = pb.ModelInferResponse.FromString(message)
    if raw:
        dtype = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8"}[datatype]
        values = np.frombuffer(parsed.raw_output_contents[0], dtype=dtype).tolist()
    else:
        field = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents"}[datatype]
        values = list(getattr(parsed.outputs[0].contents, field))
    assert infer_outputs(message) == {"outputs": [
        {"name": "predict_proba", "datatype": datatype, "shape": [1, 3], "data": values}]}


def test_shadow_comparison_ignores_name_version_and_id_but_not_outputs() -> None:
    rtol, atol = 1e-6, 1e-12
    assert compare_outputs(answer("v1", "a", [0.1, 0.9]), answer("v2", "b", [0.1, 0.9]), rtol, atol) == "agree"
    assert compare_outputs(answer("v1", "a", [0.1, 0.9]), answer("v1", "a", [0.2, 0.8]), rtol, atol) == "disagree"
    assert compare_outputs(answer("v1", "a", [0.1, 0.9]), b"\x2a\x05ab", rtol, atol) == "error"


@pytest.mark.parametrize("raw", [True, False])
def test_shadow_comparison_of_floats_uses_the_spec_tolerance_like_rest(raw: bool) -> None:
    """The same pair of answers agrees or disagrees over gRPC exactly as the REST
    comparison (``stats.outputs_agree`` on JSON) says with the same tolerance."""
    from rollout.platforms.local.stats import outputs_agree

    stable, shadow = [0.1, 0.9], [0.1 * (1 + 1e-9), 0.9 - 1e-9]  # off by far less than 1e-6 relative
    far = [0.1 * (1 + 1e-3), 0.9]
    for rtol, other, expected in ((1e-6, shadow, "agree"), (1e-12, shadow, "disagree"), (1e-6, far, "disagree"),
                                  (1e-2, far, "agree")):
        tensor = {"name": "predict_proba", "datatype": "FP64", "shape": [1, 2]}
        rest = outputs_agree({"outputs": [{**tensor, "data": stable}]}, {"outputs": [{**tensor, "data": other}]},
                             rtol, 0.0)
        assert ("agree" if rest else "disagree") == expected
        assert compare_outputs(answer("v1", "a", stable, raw=raw), answer("v2", "a", other, raw=raw),
                               rtol, 0.0) == expected
