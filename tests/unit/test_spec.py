"""A bad spec is refused before anything runs, with a message naming the field."""

from pathlib import Path

import pytest

from rollout.errors import SpecError
from rollout.spec import load_spec, parse_spec

BASE = {"model": "iris", "registry": {"type": "git", "url": "/tmp/reg"}}


def spec_with(**over):
    return {**BASE, **over}


def test_minimal_spec_defaults_to_a_local_canary():
    spec = parse_spec(BASE)
    assert spec.platform.type == "local"
    assert spec.strategy.type == "canary"
    assert spec.analysis.metrics == []


def test_malformed_yaml_names_the_line(tmp_path: Path):
    f = tmp_path / "rollout.yaml"
    f.write_text("model: iris\nregistry: {type: git, url: /x\nstrategy: [\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(f)


def test_missing_spec_file_is_named(tmp_path: Path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec(["model", "iris"])


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(strategy={"type": "rainbow"}))
    msg = str(err.value)
    assert "strategy" in msg and "rainbow" in msg
    for known in ("canary", "blue_green", "shadow"):
        assert known in msg


def test_weight_over_100_names_the_field():
    with pytest.raises(SpecError, match=r"strategy\.canary\.weights.*150.*0-100"):
        parse_spec(spec_with(strategy={"type": "canary", "weights": [10, 150]}))


def test_set_weight_over_100_in_explicit_steps_is_refused():
    with pytest.raises(SpecError, match=r"set_weight.*less than or equal to 100"):
        parse_spec(spec_with(strategy={"type": "canary", "steps": [{"set_weight": 150}]}))


def test_weights_must_increase():
    with pytest.raises(SpecError, match="increase"):
        parse_spec(spec_with(strategy={"type": "canary", "weights": [50, 20]}))


@pytest.mark.parametrize("name", ["Iris", "iris_v2", "-iris", "iris-", "iris.prod", 'x"} or vector(1)', "a" * 64])
def test_model_name_outside_dns1123_is_refused(name):
    with pytest.raises(SpecError, match="DNS-1123"):
        parse_spec(spec_with(model=name))


def test_unknown_field_is_an_error_not_ignored():
    with pytest.raises(SpecError, match=r"strategy\.canary\.wieghts: unknown field"):
        parse_spec(spec_with(strategy={"type": "canary", "wieghts": [10]}))


def test_threshold_judge_needs_a_bound():
    metric = {"name": "err", "query": "error_rate", "judge": {"type": "threshold"}}
    with pytest.raises(SpecError, match="needs min, max or both"):
        parse_spec(spec_with(analysis={"metrics": [metric]}))


def test_on_no_data_accepts_only_the_three_policies():
    metric = {"name": "err", "query": "error_rate", "judge": {"type": "threshold", "max": 1}, "on_no_data": "ignore"}
    with pytest.raises(SpecError, match=r"on_no_data.*'ignore'.*inconclusive.*fail.*pass"):
        parse_spec(spec_with(analysis={"metrics": [metric]}))


def test_metric_names_are_unique():
    metric = {"name": "err", "query": "error_rate", "judge": {"type": "threshold", "max": 1}}
    with pytest.raises(SpecError, match="repeated: err"):
        parse_spec(spec_with(analysis={"metrics": [metric, metric]}))


def test_prometheus_metric_needs_a_prometheus_url():
    metric = {"name": "err", "provider": "prometheus", "query": "up", "judge": {"type": "threshold", "max": 1}}
    with pytest.raises(SpecError, match="analysis.prometheus.url"):
        parse_spec(spec_with(analysis={"metrics": [metric]}))


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec({"model": "Bad_Name", "registry": {"type": "git"}})
    msg = str(err.value)
    assert "model" in msg and "registry.git.url" in msg


def test_prometheus_url_with_credentials_is_refused_because_the_spec_is_stored():
    metric = {"name": "err", "provider": "prometheus", "query": "up", "judge": {"type": "threshold", "max": 1}}
    with pytest.raises(SpecError, match=r"analysis\.prometheus\.url: .*must not carry credentials") as err:
        parse_spec(spec_with(analysis={"metrics": [metric], "prometheus": {"url": "http://bob:hunter2@prom:9090"}}))
    assert "hunter2" not in str(err.value)


def test_secret_looking_prometheus_headers_must_come_from_the_environment():
    prom = {"url": "http://prom:9090", "headers": {"Authorization": "Bearer abc"}}
    with pytest.raises(SpecError, match=r"Authorization look secret.*headers_env"):
        parse_spec(spec_with(analysis={"prometheus": prom}))
    ok = parse_spec(spec_with(analysis={"prometheus": {"url": "http://prom:9090", "headers": {"X-Scope-OrgID": "a"},
                                                       "headers_env": {"Authorization": "PROM_AUTH"}}}))
    assert ok.analysis.prometheus.headers_env == {"Authorization": "PROM_AUTH"}


def test_local_platform_controller_is_a_boolean_and_off_by_default():
    assert parse_spec(spec_with()).platform.controller is False
    assert parse_spec(spec_with(platform={"type": "local", "controller": True})).platform.controller is True
    with pytest.raises(SpecError, match=r"platform\.local\.controller"):
        parse_spec(spec_with(platform={"type": "local", "controller": "sometimes"}))
