"""V2 gRPC through the router with Triton's gRPC client, against MLServer and the
builtin server: the same
answers as direct, the weighted split, version pinning, mirroring and per-version
stats, as on the REST side."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.protocol.conftest import GrpcCall, Stack, grpc_outcome
from tests.waiting import wait_for

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(240)]

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float64)


def infer(client: grpcclient.InferenceServerClient, version: str = "", rows: np.ndarray = ROWS,
          **kw: Any) -> grpcclient.InferResult:
    inp = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)
    return client.infer("iris", [inp], model_version=version, **kw)


Call = GrpcCall
CALLS: dict[str, Call] = {
    "server live": lambda c: c.is_server_live(),
    "server ready": lambda c: c.is_server_ready(),
    "model ready": lambda c: c.is_model_ready("iris"),
    "model version ready": lambda c: c.is_model_ready("iris", "v1"),
    "server metadata": lambda c: c.get_server_metadata(as_json=True),
    "model metadata": lambda c: c.get_model_metadata("iris", as_json=True),
    "unknown model metadata": lambda c: c.get_model_metadata("no-such-model", as_json=True),
    "infer": lambda c: infer(c).as_numpy("predict").tolist(),
    "infer with request id": lambda c: infer(c, request_id="g-1").get_response(as_json=True)["id"],
    "infer with headers": lambda c: infer(c, headers={"x-team": "fraud"}).as_numpy("predict").tolist(),
    "unknown model infer": lambda c: c.infer("no-such-model", [grpcclient.InferInput("x", [1], "FP64")]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_grpc_call_passes_through_the_router_exactly_when_it_passes_directly(stack: Stack, name: str) -> None:
    stack.configure()
    direct = grpc_outcome(CALLS[name], stack.grpc_of(stack.v1))
    routed = grpc_outcome(CALLS[name], stack.router_grpc)
    assert routed == direct
    if name.startswith(("server", "model ready", "model metadata", "infer")):
        assert routed[0] == "ok", routed


def test_weights_split_grpc_inference_and_stats_count_it_per_version(stack: Stack) -> None:
    stack.configure(candidate="v2", weight=30)
    before = stack.stats()["versions"]
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        versions = [infer(client).get_response().model_version for _ in range(300)]
        for _ in range(10):
            client.is_server_ready()  # probes: counted apart, never as inference
    finally:
        client.close()
        stack.configure()
    share = versions.count("v2") / len(versions)
    assert 0.2 <= share <= 0.4, share  # 30% of 300: sd 2.6 points, bounds at ~3.8 sd
    after = stack.stats()["versions"]
    for v in ("v1", "v2"):
        live_before = before.get(v, {}).get("kinds", {}).get("live", {}).get("requests", 0)
        assert after[v]["kinds"]["live"]["requests"] - live_before == versions.count(v)
    health_before = before.get("v1", {}).get("kinds", {}).get("health", {}).get("requests", 0)
    assert after["v1"]["kinds"]["health"]["requests"] - health_before == 10


def test_version_pinned_grpc_calls_reach_that_version_whatever_the_split(stack: Stack) -> None:
    stack.configure(candidate="v2", weight=50)
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        for pinned in ("v1", "v2"):
            assert {infer(client, pinned).get_response().model_version for _ in range(20)} == {pinned}
            assert client.is_model_ready("iris", pinned)
        with pytest.raises(InferenceServerException) as refused:
            infer(client, "v9")
        assert "NOT_FOUND" in str(refused.value.status()) and "v9" in refused.value.message()
    finally:
        client.close()
        stack.configure()


def test_grpc_mirror_sends_a_copy_to_the_candidate_and_compares(stack: Stack) -> None:
    stack.configure(candidate="v2", weight=0, mirror=100)
    before = stack.stats()["versions"].get("v2", {}).get("mirror", {})
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        seen = {infer(client, rows=ROWS[i % 3:i % 3 + 1]).get_response().model_version for i in range(30)}
    finally:
        client.close()

    def compared() -> int:
        now = stack.stats()["versions"]["v2"]["mirror"]
        return sum(now.values()) - sum(before.values())

    try:
        assert seen == {"v1"}  # the caller only ever sees stable
        wait_for(lambda: compared() == 30, "30 gRPC mirror results")
        now = stack.stats()["versions"]["v2"]["mirror"]
        assert now["error"] == before.get("error", 0)
        assert now["agree"] + now["disagree"] - before.get("agree", 0) - before.get("disagree", 0) == 30
    finally:
        stack.configure()


def test_every_grpc_answer_names_the_version_that_gave_it(stack: Stack) -> None:
    """``x-rollout-version``: in the response headers (initial metadata) of an answer, in
    the trailing metadata of an error that has nothing else (trailers-only)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stack.configure(candidate="v2", weight=50)
    channel = grpc.insecure_channel(stack.router_grpc)
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="iris")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
        for _ in range(10):
            answer, call = stub.ModelInfer.with_call(request, timeout=10)
            assert dict(call.initial_metadata())["x-rollout-version"] == answer.model_version
        request.model_version = "v9"  # stable's server answers NOT_FOUND for a version it lacks
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(request, timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(failed.value.trailing_metadata())["x-rollout-version"] == "v1"
    finally:
        channel.close()
        stack.configure()


def test_grpc_calls_a_version_refuses_go_to_the_other_version(stack: Stack) -> None:
    """As on REST: a version whose server refuses the connection (its process is gone) never
    got the call, so the router sends it to the other version of the split; the refusal
    counts against the dead version. With no other version, UNAVAILABLE naming the version."""
    from rollout.platforms.local import supervisor as sv

    dead = f"127.0.0.1:{sv.free_port()}"
    alive = stack.grpc_of(stack.v1)

    def refused() -> int:
        return int(stack.stats()["versions"].get("v2", {}).get("connection_errors", 0))

    before = refused()
    stack.configure(candidate="v2", weight=100, grpc_backends={"v1": alive, "v2": dead})
    client = grpcclient.InferenceServerClient(stack.router_grpc)
    try:
        answered = [infer(client).get_response().model_version for _ in range(6)]
        stack.configure(stable="v2", grpc_backends={"v2": dead})
        with pytest.raises(InferenceServerException) as unreachable:
            infer(client)
        # the other version gone too: its failure is the router's answer, naming it
        also_dead = f"127.0.0.1:{sv.free_port()}"
        stack.configure(candidate="v2", weight=100, grpc_backends={"v1": also_dead, "v2": dead})
        with pytest.raises(InferenceServerException) as both:
            infer(client)
    finally:
        client.close()
        stack.configure()

    assert answered == ["v1"] * 6
    assert "UNAVAILABLE" in str(unreachable.value.status()) and "v2" in unreachable.value.message()
    assert "UNAVAILABLE" in str(both.value.status()) and "backend v1" in both.value.message(), both.value.message()
    wait_for(lambda: refused() - before == 8, "the refusals counted against v2")
