"""Whole rollouts on the local platform: real model servers, the real router, real
requests from a load generator, the real engine and a file state store.

Each test asserts what a user relies on: where the traffic went at every step, that
no caller saw an error because traffic moved, and what the rollout decided."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from rollout import app as wiring
from rollout.demo.traffic import LoadGenerator, Sample
from rollout.spec import load_spec
from rollout.state import Phase
from rollout.steps import TrafficStep

from .conftest import FAST_ANALYSIS, Recorder, serving_v1

TOLERANCE = 0.12  # > 3.5 sigma for ~150 requests per step window


def run_rollout(spec_path: Path, home: Path, version: str, rate: float = 100.0, tail_s: float = 1.0):
    rig, rec = serving_v1(spec_path, home), Recorder()
    with LoadGenerator(rig.infer_url(), rate_per_s=rate, workers=6) as load:
        ms = rig.start(version, rec)
        time.sleep(tail_s)  # keep calling for a while: what callers get after the decision matters too
    return ms, load.snapshot(), rec, rig.platform


def traffic_windows(ms, rec: Recorder) -> list[tuple[TrafficStep, float, float]]:
    """(step, start, end) of each period during which one traffic step's split held."""
    r = ms.rollout
    done = {idx: t for t, kind, _, idx in rec.events if kind == "step_done" and idx is not None}
    changes = [(i, r.plan[i], done[i]) for i in sorted(done) if isinstance(r.plan[i], TrafficStep)]
    end_of_run = rec.events[-1][0]
    out = []
    for n, (_, step, t) in enumerate(changes):
        # A split holds until the next traffic step *begins* (it moves the router before
        # it is recorded done), not until that step is done.
        until = switch_began(rec, changes[n + 1][0]) if n + 1 < len(changes) else end_of_run
        out.append((step, t + 0.3, until - 0.05))  # skip requests in flight across a change
    return out


def switch_began(rec: Recorder, step_index: int) -> float:
    """When the switching step began: traffic moves only after this (the engine records its
    intent first), so a request sent well before it was routed by the old split, however
    slow the machine is."""
    return next(t for t, kind, _, idx in rec.events if kind == "step" and idx == step_index)


def share(samples: list[Sample], version: str, start: float, end: float) -> tuple[float, int]:
    window = [s for s in samples if start <= s.at <= end and s.version]
    return (sum(s.version == version for s in window) / len(window) if window else float("nan")), len(window)


class PreviewTraffic:
    """A listener that, once the candidate is up (step 1 done), sends it preview
    requests the way a tester would during a blue-green preview."""

    def __init__(self, rig) -> None:
        self.rig, self.load = rig, None

    def __call__(self, event, ms) -> None:
        if event.kind == "step_done" and event.step_index == 0 and self.load is None:
            self.load = LoadGenerator(self.rig.infer_url(preview=True), rate_per_s=40, workers=2).start()

    def stop(self) -> list[Sample]:
        assert self.load is not None, "the candidate never came up for preview"
        return self.load.stop()


def test_canary_promotes_a_good_version_and_traffic_follows_every_step(make_spec, local_home):
    ms, samples, rec, platform = run_rollout(make_spec(), local_home, "v2")

    assert ms.rollout.phase is Phase.PROMOTED
    assert ms.stable.version == "v2" and [p.version for p in ms.previous] == ["v1"]
    windows = traffic_windows(ms, rec)
    assert [w[0].weight for w in windows] == [30, 60, 100]
    for step, start, end in windows[:-1]:
        got, n = share(samples, "v2", start, end)
        assert n >= 50, f"too few requests in the {step.weight}% window"
        assert abs(got - step.weight / 100) <= TOLERANCE, f"v2 got {got:.2f} at {step.weight}%"
    assert [s for s in samples if s.status != 200] == [], "a caller saw an error while traffic moved"
    measured = [m for m in ms.rollout.measurements if m.metric == "error-rate"]
    # Every value measured is 0 errors and passes. On a loaded machine a reading of the
    # router's stats can time out: that is no data (never a fail), and is not this test's point.
    taken = [m for m in measured if m.status == "value"]
    odd = [(m.tick, m.status, m.verdict, m.value, m.reason) for m in measured
           if m.verdict == "fail" or (m.status == "value" and (m.verdict != "pass" or m.value != 0.0))]
    assert taken and not odd, odd
    # The old stable is kept for the scale-down delay so a rollback needs no cold start.
    assert set(platform.running_versions()) == {"v1", "v2"}


def test_canary_rolls_back_a_failing_version_and_names_the_value(make_spec, local_home):
    ms, samples, rec, platform = run_rollout(make_spec(), local_home, "v3")

    r = ms.rollout
    assert r.phase is Phase.ROLLED_BACK and ms.stable.version == "v1"
    assert "error-rate 1 > max 0.05" in r.reason
    assert r.step_index == 1, "it failed at the first analysis, not later"
    assert platform.get_traffic().weight == 0 and platform.running_versions() == ["v1"]
    failed = [s for s in samples if s.status != 200]
    assert failed and all(s.version == "v3" for s in failed), "an error came from the stable version"
    after = [s for s in samples if s.at > rec.times("rolled_back")[0] + 0.3]
    assert after and all(s.status == 200 and s.version == "v1" for s in after)


def test_blue_green_judges_preview_traffic_then_switches_at_once(make_spec, local_home):
    rig = serving_v1(make_spec(strategy={"type": "blue_green", "auto_promotion_s": 0, "scale_down_delay_s": 0}),
                     local_home)
    rec, previews = Recorder(), PreviewTraffic(rig)
    with LoadGenerator(rig.infer_url(), rate_per_s=80, workers=4) as live:
        ms = rig.start("v2", rec, previews)
        time.sleep(1.0)
    preview_samples = previews.stop()
    platform = rig.platform

    assert ms.rollout.phase is Phase.PROMOTED and ms.stable.version == "v2"
    switch = next(t for t, kind, _, idx in rec.events if kind == "step_done" and idx == 2)
    before = [s for s in live.samples if s.at < switch_began(rec, 2) - 0.5 and s.version]
    after = [s for s in live.samples if s.at > switch + 0.3 and s.version]
    assert before and all(s.version == "v1" for s in before), "live traffic reached the candidate before the switch"
    assert after and all(s.version == "v2" for s in after)
    assert preview_samples and {s.version for s in preview_samples if s.version} == {"v2"}
    assert all(s.status == 200 for s in live.samples)
    assert platform.running_versions() == ["v2"]


def test_blue_green_bad_preview_never_reaches_live_traffic(make_spec, local_home):
    rig = serving_v1(make_spec(strategy={"type": "blue_green", "auto_promotion_s": 0}), local_home)
    previews = PreviewTraffic(rig)
    with LoadGenerator(rig.infer_url(), rate_per_s=60) as live:
        ms = rig.start("v3", previews)
    previews.stop()

    assert ms.rollout.phase is Phase.ROLLED_BACK and ms.stable.version == "v1"
    assert "error-rate" in ms.rollout.reason
    assert live.samples and all(s.status == 200 and s.version == "v1" for s in live.samples)


def shadow_analysis(min_agreement: float) -> dict:
    return {
        **FAST_ANALYSIS,
        "metrics": FAST_ANALYSIS["metrics"] + [
            {"name": "agreement", "query": "agreement", "judge": {"type": "agreement", "min": min_agreement}}],
    }


def test_shadow_copies_traffic_callers_only_see_stable_then_promotes(make_spec, local_home):
    spec = make_spec(strategy={"type": "shadow", "mirror_percent": 100, "scale_down_delay_s": 0},
                     analysis=shadow_analysis(0.5))
    ms, samples, rec, platform = run_rollout(spec, local_home, "v2")

    assert ms.rollout.phase is Phase.PROMOTED and ms.stable.version == "v2"
    during = [s for s in samples if s.at < switch_began(rec, 2) - 0.5]
    assert during and all(s.version == "v1" and s.status == 200 for s in during)
    agreement = [m for m in ms.rollout.measurements if m.metric == "agreement"]
    assert agreement and 0.5 <= agreement[-1].value <= 1.0
    assert all(s.status == 200 for s in samples)


def test_shadow_of_a_broken_model_rolls_back_and_no_caller_sees_its_errors(make_spec, local_home):
    spec = make_spec(strategy={"type": "shadow", "mirror_percent": 50}, analysis=shadow_analysis(0.9))
    ms, samples, rec, platform = run_rollout(spec, local_home, "v3")

    assert ms.rollout.phase is Phase.ROLLED_BACK and ms.stable.version == "v1"
    assert "error-rate 1 > max 0.05" in ms.rollout.reason
    assert samples and all(s.status == 200 and s.version == "v1" for s in samples)
    assert platform.get_traffic().mirror == 0


def test_shadow_discard_keeps_stable_and_retires_the_candidate(make_spec, local_home):
    spec = make_spec(strategy={"type": "shadow", "on_success": "discard"}, analysis=shadow_analysis(0.5))
    ms, samples, rec, platform = run_rollout(spec, local_home, "v2")

    assert ms.rollout.phase is Phase.COMPLETED and ms.stable.version == "v1"
    assert platform.running_versions() == ["v1"]
    assert all(s.version == "v1" for s in samples if s.version)


def test_candidate_that_never_becomes_ready_times_out_and_stable_keeps_serving(make_spec, cli, local_home):
    good = make_spec()
    assert cli("start", "iris:v1", "-f", str(good)).returncode == 0
    hanging = make_spec(platform={"server": "python3 -c 'import time; time.sleep(1000)' {port} {model_dir}",
                                  "ready_timeout_s": 2})
    result = cli("start", "iris:v2", "-f", str(hanging))

    assert result.returncode == 3, result.stderr
    assert "v2" in result.stdout and "2s" in result.stdout and "ready" in result.stdout
    platform = wiring.make_platform(load_spec(good), local_home)
    assert platform.running_versions() == ["v1"], "the candidate's process was left behind"
    resp = requests.post(f"{platform.endpoint()}/v2/models/iris/infer",
                         json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]},
                         timeout=5)
    assert resp.status_code == 200 and resp.json()["model_version"] == "v1"
    status = cli("status", "iris", "-o", "json")
    assert '"phase": "Failed"' in status.stdout


def test_candidate_killed_mid_analysis_is_rolled_back_and_stable_keeps_serving(make_spec, local_home):
    """kill -9 of the candidate's server: the rollout notices (its health, or its 502s),
    rolls back, and the callers are back on stable."""
    import os
    import signal

    from rollout.platforms.local import supervisor as sv

    rig = serving_v1(make_spec(strategy={"type": "canary", "weights": [30]},
                               analysis={**FAST_ANALYSIS, "duration_s": 3}), local_home)
    platform = rig.platform

    def kill_candidate(event, ms):
        if event.kind == "step" and event.step_index == 1:
            pid = next(r.pid for r in sv.version_records(local_home, "iris") if r.version == "v2")
            os.kill(pid, signal.SIGKILL)

    rec = Recorder()
    with LoadGenerator(rig.infer_url(), rate_per_s=80, workers=4) as load:
        ms = rig.start("v2", rec, kill_candidate)
        time.sleep(1.0)

    assert ms.rollout.phase is Phase.ROLLED_BACK and ms.stable.version == "v1"
    # Whichever notices first: the health check while waiting, or the analysis on the 502s.
    assert "candidate v2 stopped being ready" in ms.rollout.reason or "error-rate" in ms.rollout.reason
    failed = [s for s in load.samples if s.status != 200]
    assert {s.status for s in failed} <= {502} and {s.version for s in failed} <= {"v2"}
    rolled_back = rec.times("rolled_back")[0]
    assert max((s.at for s in failed), default=0) <= rolled_back, "callers kept failing after the rollback"
    after = [s for s in load.samples if s.at > rolled_back + 0.3]
    assert after and all(s.status == 200 and s.version == "v1" for s in after)
    assert platform.running_versions() == ["v1"] and platform.get_traffic().candidate is None
