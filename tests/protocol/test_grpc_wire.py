"""The router's two-field protobuf reader agrees with the generated classes of the
Open Inference Protocol that tritonclient ships (fields, order, merge semantics)."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as pb

from rollout.platforms.local.grpc_proxy import WireError, _outputs_part, model_and_version

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
        _outputs_part(garbage)


def test_shadow_comparison_ignores_name_version_and_id_but_not_outputs() -> None:
    def answer(version: str, rid: str, data: bytes) -> bytes:
        resp = pb.ModelInferResponse(model_name="iris", model_version=version, id=rid)
        resp.outputs.add(name="predict", datatype="INT64", shape=[1, 1])
        resp.raw_output_contents.append(data)
        return resp.SerializeToString()

    assert _outputs_part(answer("v1", "a", b"\x01" * 8)) == _outputs_part(answer("v2", "b", b"\x01" * 8))
    assert _outputs_part(answer("v1", "a", b"\x01" * 8)) != _outputs_part(answer("v1", "a", b"\x02" * 8))
