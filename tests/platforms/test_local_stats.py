"""Windowed stats and shadow comparison, in virtual time (pure functions, no processes)."""

from __future__ import annotations

import pytest

from rollout.clock import VirtualClock
from rollout.platforms.local.routing import RouterConfig
from rollout.platforms.local.stats import Stats, outputs_agree

pytestmark = pytest.mark.timeout(180)


def out(datatype: str, data: list, name: str = "predict", shape: list | None = None) -> dict:
    return {"outputs": [{"name": name, "datatype": datatype, "shape": shape or [len(data), 1], "data": data}]}


def test_window_only_counts_the_last_window_s_seconds() -> None:
    clock = VirtualClock()
    stats = Stats(clock.now)
    for latency_ms in (10.0, 20.0, 30.0):
        stats.start("v1")
        stats.finish("v1", 200, latency_ms)
        clock.sleep(10)
    stats.start("v1")
    stats.finish("v1", 503, 40.0)

    assert stats.summary(5)["v1"]["requests"] == 1
    last_15 = stats.summary(15)["v1"]
    assert last_15["requests"] == 2 and last_15["errors"] == 1 and last_15["codes"] == {"200": 1, "503": 1}
    assert stats.summary(900)["v1"]["requests"] == 4


def test_history_older_than_the_ring_is_forgotten() -> None:
    clock = VirtualClock()
    stats = Stats(clock.now)
    stats.start("v1")
    stats.finish("v1", 200, 5.0)
    clock.sleep(900)
    stats.start("v1")
    stats.finish("v1", 200, 5.0)  # lands in the same ring slot: replaces the old second
    assert stats.summary(900)["v1"]["requests"] == 1


def test_percentiles_are_within_bucket_precision() -> None:
    stats = Stats(VirtualClock().now)
    for ms in range(1, 1001):
        stats.start("v1")
        stats.finish("v1", 200, float(ms))
    latency = stats.summary(60)["v1"]["latency_ms"]
    assert abs(latency["mean"] - 500.5) < 1e-9
    for key, exact in (("p50", 500), ("p90", 900), ("p99", 990)):
        assert abs(latency[key] - exact) / exact < 0.03


def test_connection_failures_are_errors_with_code_502() -> None:
    stats = Stats(VirtualClock().now)
    stats.start("v2")
    stats.finish("v2", None, 1.0)
    summary = stats.summary(60)["v2"]
    assert summary["errors"] == 1 and summary["connection_errors"] == 1 and summary["inflight"] == 0


def test_floats_agree_within_tolerance_and_ints_must_be_exact() -> None:
    assert outputs_agree(out("FP64", [0.5, 1.0]), out("FP64", [0.5 + 1e-9, 1.0]), 1e-6, 0.0)
    assert not outputs_agree(out("FP64", [0.5, 1.0]), out("FP64", [0.5001, 1.0]), 1e-6, 0.0)
    assert outputs_agree(out("FP64", [0.5]), out("FP64", [0.5001]), 1e-3, 0.0)
    assert not outputs_agree(out("INT64", [1, 2]), out("INT64", [1, 3]), 1.0, 1.0)
    assert not outputs_agree(out("BYTES", ["a"]), out("BYTES", ["b"]), 1.0, 1.0)
    assert not outputs_agree(out("BOOL", [True]), out("BOOL", [False]), 1.0, 1.0)


def test_different_output_names_or_shapes_disagree() -> None:
    assert not outputs_agree(out("INT64", [1]), out("INT64", [1], name="predict_proba"), 1e-6, 0.0)
    assert not outputs_agree(out("INT64", [1, 2], shape=[2, 1]), out("INT64", [1, 2], shape=[1, 2]), 1e-6, 0.0)


def test_weights_give_stable_the_rest() -> None:
    config = RouterConfig(backends={"v1": "http://a", "v2": "http://b"}, stable="v1", candidate="v2", weight=30)
    assert config.weights() == {"v1": 70, "v2": 30}


def test_only_inference_makes_a_versions_numbers_and_each_kind_is_kept_apart() -> None:
    stats = Stats(VirtualClock().now)
    for kind, code in (("live", 200), ("pinned", 500), ("preview", 200), ("shadow", 200),
                       ("health", 503), ("metadata", 404), ("other", 500)):
        stats.start("v2")
        stats.finish("v2", code, 5.0, kind)

    v2 = stats.summary(60)["v2"]

    assert (v2["requests"], v2["errors"]) == (4, 1)  # live, pinned, preview, shadow
    assert v2["kinds"]["health"]["errors"] == 1 and v2["kinds"]["other"]["codes"] == {"500": 1}
    assert v2["shadow_requests"] == 1 and v2["preview_requests"] == 1


def test_a_shadow_timeout_is_the_shadows_and_not_the_versions_error() -> None:
    stats = Stats(VirtualClock().now)
    stats.start("v2")
    stats.finish("v2", 504, 10_000.0, "shadow", timed_out=True)
    stats.start("v2")
    stats.finish("v2", 200, 3.0, "shadow")

    v2 = stats.summary(60)["v2"]

    assert (v2["requests"], v2["errors"], v2["latency_ms"]["p99"] < 10) == (1, 0, True)
    assert v2["kinds"]["shadow"]["timeouts"] == 1 and v2["kinds"]["shadow"]["requests"] == 2


def test_an_unknown_kind_is_refused() -> None:
    stats = Stats(VirtualClock().now)
    stats.start("v1")
    with pytest.raises(ValueError, match="unknown request kind 'probe'"):
        stats.finish("v1", 200, 1.0, "probe")
