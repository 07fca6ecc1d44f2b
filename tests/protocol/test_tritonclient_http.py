"""Triton's official HTTP client, each call made straight to the model server and then
through the router: a call passes through the router exactly when it passes directly,
with the same answer."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.protocol.conftest import Stack, client_outcome

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(240)]

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float64)


def infer_args(binary: bool, rows: np.ndarray = ROWS, outputs: tuple[str, ...] = ("predict",)) -> dict[str, Any]:
    inp = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows, binary_data=binary)
    return {"model_name": "iris", "inputs": [inp],
            "outputs": [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]}


def result_of(result: httpclient.InferResult, outputs: tuple[str, ...] = ("predict",),
              keep_id: bool = False) -> dict[str, Any]:
    """What must be the same directly and routed (MLServer makes up a random id when
    the request has none, so the id is compared only when the client set one)."""
    response = result.get_response()
    return {"id": response.get("id") if keep_id else None, "model_name": response.get("model_name"),
            "outputs": {name: result.as_numpy(name).tolist() for name in outputs}}


def wrong_shape_args() -> dict[str, Any]:
    args = infer_args(False)
    args["inputs"][0].set_shape([5, 4])  # 3 rows of data declared as 5: the server refuses it
    return args


Call = Callable[[httpclient.InferenceServerClient], Any]

CALLS: dict[str, Call] = {
    "server live": lambda c: c.is_server_live(),
    "server ready": lambda c: c.is_server_ready(),
    "model ready": lambda c: c.is_model_ready("iris"),
    "model version ready": lambda c: c.is_model_ready("iris", "v1"),
    "unknown model ready": lambda c: c.is_model_ready("no-such-model"),
    "server metadata": lambda c: c.get_server_metadata(),
    "model metadata": lambda c: c.get_model_metadata("iris"),
    "model version metadata": lambda c: c.get_model_metadata("iris", "v1"),
    "unknown model metadata": lambda c: c.get_model_metadata("no-such-model"),
    "json infer": lambda c: result_of(c.infer(**infer_args(False))),
    "json infer pinned": lambda c: result_of(c.infer(model_version="v1", **infer_args(False))),
    "binary infer": lambda c: result_of(c.infer(**infer_args(True))),
    "binary infer, proba": lambda c: result_of(c.infer(**infer_args(True, outputs=("predict_proba",))),
                                               ("predict_proba",)),
    "request id": lambda c: result_of(c.infer(request_id="req-42", **infer_args(False)), keep_id=True),
    "custom headers": lambda c: result_of(c.infer(headers={"X-Team": "fraud", "X-Trace": "abc"},
                                                  **infer_args(False))),
    "gzip answer": lambda c: result_of(c.infer(response_compression_algorithm="gzip",
                                               **infer_args(False, np.tile(ROWS, (60, 1))))),
    "gzip request": lambda c: result_of(c.infer(request_compression_algorithm="gzip", **infer_args(False))),
    "wrong shape": lambda c: c.infer(**wrong_shape_args()),
    "unknown model infer": lambda c: c.infer(**{**infer_args(False), "model_name": "no-such-model"}),
}


def outcome(call: Call, url: str) -> tuple[str, Any]:
    return client_outcome(httpclient.InferenceServerClient(url, connection_timeout=10, network_timeout=30), call)


def host(url: str) -> str:
    return url.removeprefix("http://")


@pytest.mark.parametrize("name", list(CALLS))
def test_a_call_passes_through_the_router_exactly_when_it_passes_directly(stack: Stack, name: str) -> None:
    stack.configure()  # all live traffic to v1, the server called directly
    direct = outcome(CALLS[name], host(stack.v1.url))
    routed = outcome(CALLS[name], host(stack.router.url))
    assert routed == direct


def test_the_calls_that_must_pass_do_pass_directly_and_routed(stack: Stack) -> None:
    """The parity above could hold with both failing; these must succeed on both."""
    stack.configure()
    must_pass = ["server live", "server ready", "model ready", "server metadata", "model metadata",
                 "json infer", "json infer pinned", "request id", "custom headers", "gzip answer"]
    if stack.kind == "builtin":
        must_pass += ["binary infer", "binary infer, proba"]  # MLServer lacks the binary extension
    for name in must_pass:
        for url in (stack.v1.url, stack.router.url):
            status, value = outcome(CALLS[name], host(url))
            assert status == "ok", f"{name} via {url}: {value}"
    assert outcome(CALLS["request id"], host(stack.router.url))[1]["id"] == "req-42"


def test_async_infer_with_concurrency_gets_every_answer_right(stack: Stack) -> None:
    stack.configure()
    expected = result_of(httpclient.InferenceServerClient(host(stack.v1.url)).infer(**infer_args(False)))["outputs"]
    client = httpclient.InferenceServerClient(host(stack.router.url), concurrency=8, network_timeout=30)
    try:
        handles = [client.async_infer(request_id=f"r{i}", **infer_args(False)) for i in range(48)]
        results = [h.get_result() for h in handles]
    finally:
        client.close()
    assert [r.get_response()["id"] for r in results] == [f"r{i}" for i in range(48)]
    assert all(result_of(r)["outputs"] == expected for r in results)


def test_version_pinned_calls_reach_that_version_whatever_the_split(stack: Stack) -> None:
    stack.configure(candidate="v2", weight=50)
    client = httpclient.InferenceServerClient(host(stack.router.url))
    try:
        for pinned in ("v1", "v2"):
            versions = {client.infer(model_version=pinned, **infer_args(False)).get_response()["model_version"]
                        for _ in range(20)}
            assert versions == {pinned}
            assert client.is_model_ready("iris", pinned)
            assert client.get_model_metadata("iris", pinned)["name"] == "iris"
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model_version="v9", **infer_args(False))
        assert refused.value.status() == "404" and "v9" in refused.value.message()
    finally:
        client.close()
        stack.configure()
