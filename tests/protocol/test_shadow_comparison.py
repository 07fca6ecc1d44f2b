"""The REST shadow comparison reads binary tensor answers (Triton's binary extension) as
values, so floats are compared within the spec's tolerance as in JSON answers and in
gRPC answers, whatever representation each version's server chose."""

from __future__ import annotations

import json

import numpy as np
import pytest
from multidict import CIMultiDict

from rollout.platforms.local.router import BINARY_HEADER, Answer, compare_answers

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(30)]


def binary_answer(values: list[float], datatype: str = "FP64", size: int | None = None) -> Answer:
    raw = np.array(values, dtype={"FP64": "<f8", "FP32": "<f4", "INT64": "<i8"}[datatype]).tobytes()
    head = json.dumps({"model_name": "iris", "outputs": [{
        "name": "predict_proba", "datatype": datatype, "shape": [1, len(values)],
        "parameters": {"binary_data_size": len(raw) if size is None else size}}]}).encode()
    headers = CIMultiDict({"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))})
    return Answer(200, "OK", headers, head + raw)


def json_answer(values: list[float], datatype: str = "FP64") -> Answer:
    body = json.dumps({"model_name": "iris", "outputs": [
        {"name": "predict_proba", "datatype": datatype, "shape": [1, len(values)], "data": values}]}).encode()
    return Answer(200, "OK", CIMultiDict({"Content-Type": "application/json"}), body)


def test_binary_floats_agree_within_the_tolerance_and_not_beyond() -> None:
    stable, close = [0.1, 0.9], [0.1 * (1 + 1e-9), 0.9]
    assert compare_answers(binary_answer(stable), binary_answer(close), 1e-6, 0.0) == "agree"
    assert compare_answers(binary_answer(stable), binary_answer(close), 1e-12, 0.0) == "disagree"
    assert compare_answers(binary_answer(stable), binary_answer([0.2, 0.8]), 1e-6, 0.0) == "disagree"


def test_a_binary_and_a_json_answer_with_the_same_values_agree() -> None:
    assert compare_answers(json_answer([0.25, 0.75]), binary_answer([0.25, 0.75]), 1e-6, 0.0) == "agree"
    assert compare_answers(json_answer([1, 2], "INT64"), binary_answer([1, 2], "INT64"), 1.0, 1.0) == "agree"


def test_integers_are_compared_exactly_whatever_the_tolerance() -> None:
    assert compare_answers(binary_answer([1, 2], "INT64"), binary_answer([1, 3], "INT64"), 1.0, 1.0) == "disagree"


@pytest.mark.parametrize("size", [7, 64, -1])
def test_binary_data_that_does_not_fit_its_size_is_an_error_not_a_comparison(size: int) -> None:
    assert compare_answers(binary_answer([0.5, 0.5]), binary_answer([0.5, 0.5], size=size), 1e-6, 0.0) == "error"
