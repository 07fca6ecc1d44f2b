"""schemathesis over the Open Inference Protocol's REST OpenAPI document, each generated
request sent straight to the model server and then through the router: the router
adds no failure and hides none (same status, same failed checks).

The document is tests/data/oip/open_inference_rest.yaml, from
https://github.com/kserve/open-inference-protocol (specification/protocol/
open_inference_rest.yaml at commit d49cc23f89d709d87b210ef9449e273ae243984e, Apache-2.0).
Examples are bounded and derandomised so the suite takes seconds, not minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from schemathesis.core.failures import FailureGroup
from hypothesis import HealthCheck, given, settings

from tests.protocol.conftest import Stack

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(300)]

SPEC = Path(__file__).parent.parent / "data" / "oip" / "open_inference_rest.yaml"
# The upstream document writes path templates as /v2/models/${MODEL_NAME}/...; read as
# OpenAPI's {MODEL_NAME} (the shipped file stays verbatim).
schema = schemathesis.openapi.from_dict(yaml.safe_load(SPEC.read_text().replace("${", "{")))
SESSION = requests.Session()


def checked(case: schemathesis.Case, base_url: str) -> tuple[int, str, tuple[str, ...]]:
    """(status, content type, names of the schemathesis checks that failed)."""
    response = case.call(base_url=base_url, session=SESSION, timeout=30)
    failed: tuple[str, ...] = ()
    try:
        case.validate_response(response)
    except FailureGroup as exc:  # a BaseExceptionGroup of the checks that failed
        group = exc.exceptions
        failed = tuple(sorted({type(e).__name__ + ":" + str(getattr(e, "title", "")) for e in group}))
    return response.status_code, response.headers.get("Content-Type", "").split(";")[0], failed


OPERATIONS = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


@pytest.mark.parametrize("label", list(OPERATIONS))
def test_the_router_adds_no_failure_and_hides_none(label: str, stack: Stack) -> None:
    operation = OPERATIONS[label]

    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def same_through_the_router(case: schemathesis.Case) -> None:
        params = case.path_parameters or {}
        if "MODEL_NAME" in params and len(str(params)) % 2:  # half of them name the model served
            case.path_parameters = {**params, "MODEL_NAME": "iris", "MODEL_VERSION": "v1"}
        direct = checked(case, stack.v1.url)
        routed = checked(case, stack.router.url)
        assert routed == direct, case.as_curl_command()
        outcomes.add(direct[0])

    outcomes: set[int] = set()
    same_through_the_router()
    assert outcomes  # the examples ran


def test_the_document_is_the_one_shipped_with_its_source() -> None:
    assert "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer" in SPEC.read_text()
    paths: dict[str, Any] = schema.raw_schema["paths"]
    assert {"/v2/health/live", "/v2/health/ready", "/v2/", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"} <= set(paths)
