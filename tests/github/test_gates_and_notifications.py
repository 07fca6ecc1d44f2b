"""Gates, hooks and notifications against a real HTTP server on 127.0.0.1, with the
real engine, a file state store and the local platform (built-in servers)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout import app as wiring
from rollout.cli import cli
from rollout.spec import load_spec
from rollout.state import FileStateStore, ModelState, Phase
from rollout.steps import GateStep

pytestmark = pytest.mark.slow

NO_METRICS: dict[str, Any] = {"interval_s": 0.05, "duration_s": 0.0, "metrics": []}


def engine_for(spec_path: Path, home: Path, events: list[Any] | None = None):
    spec = load_spec(spec_path)
    registry = wiring.make_registry(spec, home)
    recorder = (lambda e, ms: events.append(e)) if events is not None else None
    engine = wiring.build_engine(spec, home, "start", [recorder] if recorder else [], poll_s=0.05)
    return engine, registry


def roll(spec_path: Path, home: Path, version: str = "v2", events: list[Any] | None = None) -> ModelState:
    """Deploy v1 as stable, then roll ``version`` out; returns the final state."""
    engine, registry = engine_for(spec_path, home)
    engine.start(registry.resolve("iris:v1"))
    engine, registry = engine_for(spec_path, home, events)
    return engine.start(registry.resolve(f"iris:{version}"))


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(30), f"timed out waiting for {what}"  # a bound against hangs, not a timing assertion


def test_a_refusing_confirm_promotion_keeps_the_rollout_waiting_until_it_answers_2xx(
        write_spec: Any, local_home: Path, hook_server: Any) -> None:
    hook_server.answers["/confirm"] = 500
    spec = write_spec(analysis=NO_METRICS,
                      webhooks={"hooks": [{"name": "approve", "type": "confirm-promotion", "url": f"{hook_server.url}/confirm"}]})
    events: list[Any] = []
    result: dict[str, ModelState] = {}
    engine, registry = engine_for(spec, local_home)
    engine.start(registry.resolve("iris:v1"))
    engine, registry = engine_for(spec, local_home, events)
    runner = threading.Thread(target=lambda: result.setdefault("ms", engine.start(registry.resolve("iris:v2"))))
    runner.start()
    try:
        asked = hook_server.event("/confirm")
        wait(asked, "the first confirm-promotion call")
        while hook_server.count("/confirm") < 3:  # re-asked, not given up on
            asked.clear()
            wait(asked, "confirm-promotion to be asked again")
        during = FileStateStore(local_home).load("iris").rollout
        assert during is not None and during.phase is Phase.PROGRESSING
        step = during.current_step()
        assert isinstance(step, GateStep) and step.hook == "confirm-promotion"
        assert during.traffic.weight == 50
    finally:
        hook_server.answers["/confirm"] = 200
        runner.join(60)
    ms = result["ms"]
    assert ms.rollout is not None and ms.rollout.phase is Phase.PROMOTED and ms.stable.version == "v2"
    assert [e.kind for e in events].count("waiting") == 1
    body = hook_server.calls["/confirm"][0]
    assert (body["type"], body["model"], body["stable"], body["candidate"]) == ("confirm-promotion", "iris", "v1", "v2")


def test_a_confirm_gate_with_wait_s_pauses_with_exit_4_and_promote_passes_it(
        write_spec: Any, local_home: Path, hook_server: Any) -> None:
    hook_server.answers["/confirm"] = 403
    spec = write_spec(analysis=NO_METRICS, webhooks={"hooks": [
        {"name": "approve", "type": "confirm-promotion", "url": f"{hook_server.url}/confirm", "wait_s": 0}]})
    ms = roll(spec, local_home)
    assert ms.rollout.phase is Phase.PAUSED and "gate approve answered HTTP 403" in ms.rollout.reason
    engine, _ = engine_for(spec, local_home)
    assert engine.promote("v2").rollout.phase is Phase.PROMOTED


def test_a_rollback_hook_answering_2xx_rolls_back_and_traffic_returns_to_stable(
        write_spec: Any, local_home: Path, hook_server: Any) -> None:
    steps = [{"set_weight": 50}, {"pause": {"duration_s": 600}}]
    spec = write_spec(analysis=NO_METRICS, strategy={"type": "canary", "steps": steps, "scale_down_delay_s": 0},
                      webhooks={"hooks": [{"name": "kill-switch", "type": "rollback", "url": f"{hook_server.url}/rollback"}]})
    ms = roll(spec, local_home)
    r = ms.rollout
    assert r.phase is Phase.ROLLED_BACK and r.reason.startswith("rollback webhook kill-switch answered HTTP 200")
    assert ms.stable.version == "v1"
    traffic = wiring.make_platform(load_spec(spec), local_home).get_traffic()
    assert traffic is not None and traffic.stable == "v1" and traffic.weight == 0
    assert hook_server.calls["/rollback"][0]["type"] == "rollback"


def test_a_rollback_hook_answering_non_2xx_lets_the_rollout_finish(write_spec: Any, local_home: Path,
                                                                    hook_server: Any) -> None:
    hook_server.answers["/rollback"] = 404
    steps = [{"set_weight": 50}, {"pause": {"duration_s": 0.5}}]
    spec = write_spec(analysis=NO_METRICS, strategy={"type": "canary", "steps": steps, "scale_down_delay_s": 0},
                      webhooks={"hooks": [{"name": "kill-switch", "type": "rollback", "url": f"{hook_server.url}/rollback"}]})
    ms = roll(spec, local_home)
    assert ms.rollout.phase is Phase.PROMOTED
    assert hook_server.count("/rollback") >= 1


def test_a_failing_pre_rollout_hook_rolls_back_before_any_traffic_reaches_the_candidate(
        write_spec: Any, local_home: Path, hook_server: Any) -> None:
    hook_server.answers["/pre"] = 500
    spec = write_spec(analysis=NO_METRICS, webhooks={"hooks": [
        {"name": "smoke", "type": "pre-rollout", "url": f"{hook_server.url}/pre", "retries": 1}]})
    ms = roll(spec, local_home)
    r = ms.rollout
    assert r.phase is Phase.ROLLED_BACK and r.reason.startswith("pre-rollout gate smoke answered HTTP 500")
    assert hook_server.count("/pre") == 1  # a 500 is an answer; only 502/503/504 and no answer are retried
    assert [getattr(s, "weight", None) for s in r.plan[: r.step_index]] == [0]


def test_the_builtin_samples_check_passes_a_compatible_candidate(write_spec: Any, local_home: Path) -> None:
    spec = write_spec(analysis=NO_METRICS, webhooks={"hooks": [{"name": "samples", "type": "pre-rollout", "builtin": "samples"}]})
    events: list[Any] = []
    ms = roll(spec, local_home, "v2", events)
    assert ms.rollout.phase is Phase.PROMOTED
    assert any(e.kind == "step_done" and "gate samples passed (2 sample(s)" in e.message for e in events)


def test_the_builtin_samples_check_rolls_back_a_candidate_that_fails_its_samples(write_spec: Any, local_home: Path) -> None:
    spec = write_spec(analysis=NO_METRICS, webhooks={"hooks": [{"name": "samples", "type": "pre-rollout", "builtin": "samples"}]})
    ms = roll(spec, local_home, "v3")
    assert ms.rollout.phase is Phase.ROLLED_BACK
    assert "candidate v3 failed sample one.json: HTTP 5" in ms.rollout.reason


def test_post_rollout_hooks_hear_the_outcome(write_spec: Any, local_home: Path, hook_server: Any) -> None:
    spec = write_spec(analysis=NO_METRICS, webhooks={"hooks": [
        {"name": "audit", "type": "post-rollout", "url": f"{hook_server.url}/post", "metadata": {"team": "fraud"}}]})
    result = CliRunner().invoke(cli, ["start", "iris:v1", "-f", str(spec), "--home", str(local_home)])
    assert result.exit_code == 0
    result = CliRunner().invoke(cli, ["start", "iris:v2", "-f", str(spec), "--home", str(local_home)])
    assert result.exit_code == 0, result.output
    bodies = hook_server.calls["/post"]
    assert [(b["event"], b["candidate"], b["metadata"]) for b in bodies][-1] == ("promoted", "v2", {"team": "fraud"})


def test_notifications_arrive_a_down_endpoint_does_not_block_and_no_url_leaks(
        write_spec: Any, local_home: Path, hook_server: Any, free_port: int, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "T0KEN-s3cr3t-hooks"
    url_file = tmp_path / "slack-url"
    url_file.write_text(f"{hook_server.url}/{secret}/slack\n")
    monkeypatch.setenv("ROLLOUT_TEST_HOOK", f"{hook_server.url}/{secret}/generic")
    monkeypatch.setenv("ROLLOUT_TEST_DOWN", f"http://127.0.0.1:{free_port}/{secret}/down")
    hook_server.answers[f"/{secret}/generic"] = 200
    spec = write_spec(analysis=NO_METRICS, webhooks={"notify": [
        {"name": "down", "type": "webhook", "url_env": "ROLLOUT_TEST_DOWN", "retries": 2},
        {"name": "team", "type": "slack", "url_file": str(url_file), "events": ["promoted", "rolled_back"]},
        {"name": "audit", "type": "webhook", "url_env": "ROLLOUT_TEST_HOOK"},
    ]})
    caplog.set_level(logging.DEBUG)
    outputs = []
    for args in (["start", "iris:v1"], ["start", "iris:v2"], ["status", "iris", "-o", "json"], ["history", "iris", "-o", "yaml"]):
        result = CliRunner().invoke(cli, [*args, "-f", str(spec), "--home", str(local_home)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)

    generic = hook_server.calls[f"/{secret}/generic"]
    assert [b["event"] for b in generic if b.get("candidate") == "v2"] == ["started", "step", "step", "step", "step", "promoted"]
    promoted = generic[-1]
    assert promoted["model"] == "iris" and promoted["phase"] == "Promoted" and "v2 promoted" in promoted["message"]
    slack = hook_server.calls[f"/{secret}/slack"]
    assert "text" in slack[-1] and "*iris* v1 → v2: promoted" in slack[-1]["text"]
    assert any("notification down" in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records)

    state_files = "".join(p.read_text() for p in (local_home / "state").glob("*"))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for text in (*outputs, state_files, logs):
        assert secret not in text
    assert "ROLLOUT_TEST_HOOK" in state_files  # the spec in the state names the variable, not the URL
