"""Every report renders from one view of the state: status says who moves a rollout (or
that nobody does), history and notifications name what decided, and the plug-in tables
refuse unknown names by listing the known ones."""

from __future__ import annotations

import pytest

from rollout import app as wiring
from rollout.demo.run import _deciding
from rollout.errors import SpecError
from rollout.integrations.notify import message
from rollout.cli.report import status_dict, status_text
from rollout.state import Event, LockHolder

from .world import MODEL, World, make_spec, version


def _detached(w: World):
    return w.engine().start(version("v2"), detach=True)


def test_status_says_when_no_process_holds_a_rollout_in_progress():
    w = World(make_spec()).serving()
    ms = _detached(w)

    assert wiring.lock_holder(w.store, MODEL) is None
    text = status_text(ms, None, show_holder=True)
    assert "held by   no process since 2023-11-14 22:13:20 UTC (its last save)" in text  # the virtual clock
    assert "nothing moves this rollout" in text and "rollout start fraud:v2" in text
    dead = LockHolder("pid 41 on ci, `rollout start`", alive=False, since=0.0)
    assert "the process that held it (pid 41 on ci, `rollout start`) is gone" in status_text(ms, None, show_holder=True,
                                                                                           gone=dead)
    assert status_dict(ms, None, gone=dead)["rollout"]["unheld"]["last_holder"] == dead.words
    with w.store.lock(MODEL, "pid 42 on ci, `rollout start`"):
        holder = wiring.lock_holder(w.store, MODEL)
        assert holder == "pid 42 on ci, `rollout start`"
        assert f"held by   {holder}" in status_text(ms, holder, show_holder=True)
        assert status_dict(ms, holder)["rollout"]["holder"] == holder
    assert "carried   by the controller (pid 9)" in status_text(ms, None, "pid 9", show_holder=True)


def test_a_finished_rollout_has_no_holder_line():
    w = World(make_spec()).serving()
    ms = w.start("v2")
    assert "held by" not in status_text(ms, None, show_holder=True)
    assert "holder" not in status_dict(ms)["rollout"]


def test_notifications_and_the_demo_name_the_deciding_measurement_never_a_dry_run_one():
    latency = {"name": "latency", "provider": "sim", "query": "latency", "dry_run": True,
               "judge": {"type": "threshold", "max": 0.1}}
    err = {"name": "error-rate", "provider": "sim", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}}
    w = World(make_spec(metrics=[err, latency])).serving()
    w.provider.script = {"error_rate": {"v2": 0.3}, "latency": {"v2": 9.0}}
    ms = w.start("v2")

    body = message("rolled_back", Event(at=0, kind="rolled_back", message="x"), ms)
    assert [d["metric"] for d in body["deciding"]] == ["error-rate"] and body["deciding"][0]["value"] == 0.3
    assert len(_deciding(ms)) == 1 and _deciding(ms)[0].startswith("error-rate=0.3 (fail")


def test_a_promoted_rollout_is_explained_by_the_last_passing_analysis():
    w = World(make_spec()).serving()
    ms = w.start("v2")
    assert _deciding(ms) and all(line.startswith("error-rate=0.01 (pass") for line in _deciding(ms))


def test_plug_in_tables_refuse_unknown_names_listing_the_known_ones(monkeypatch):
    spec = make_spec()
    monkeypatch.setattr(wiring, "PLATFORMS", {"kubernetes": wiring.PLATFORMS["kubernetes"]})
    with pytest.raises(SpecError, match="platform.type 'local' is not supported; known: kubernetes"):
        wiring.make_platform(spec, None)


def test_lint_asks_each_plug_in_to_validate_its_own_section(monkeypatch):
    seen = []

    def validate(spec):
        seen.append(spec.model)
        raise SpecError("analysis.metrics.error-rate.query: refused by the plug-in")

    monkeypatch.setitem(wiring.PROVIDERS, "sim", wiring.Plugin(lambda spec, platform: None, validate))
    with pytest.raises(SpecError, match="refused by the plug-in"):
        wiring.lint(make_spec())
    assert seen == [MODEL]
    with pytest.raises(SpecError, match="unknown provider 'nope'; known: prometheus, router, sim"):
        wiring.lint(make_spec(metrics=[{"name": "x", "provider": "nope", "query": "q",
                                        "judge": {"type": "threshold", "max": 1}}]))


def test_watch_renders_from_the_view_and_ends_with_the_outcome_code():
    from rich.console import Console

    from rollout.cli.watch import renderable, watch_status

    w = World(make_spec(), script={"v1": 0.01, "v2": 0.3}).serving()
    w.start("v2")
    lines: list[str] = []
    assert watch_status(w.store, MODEL, interval_s=1, clock=w.clock, echo=lines.append, live=False) == 3
    assert "RolledBack" in lines[-1] and "analysis failed at step 2" in lines[-1]
    console = Console(record=True, width=160)
    console.print(renderable(w.state()))
    text = console.export_text()
    assert "RolledBack" in text and "error-rate" in text and "v2 0%" in text


def test_local_status_names_the_command_that_brings_a_dead_router_back():
    """Whether nginx still serves alone or nothing serves the ports at all, a dead router's
    row says which command starts it again."""
    from rollout.cli.report import local_text
    from rollout.platforms.local.platform import LocalModelStatus, ProcessStatus
    from rollout.platforms.local.supervisor import ProcessRecord

    record = ProcessRecord("iris", "router", "router", 4242, 9000, ["router", "--data-plane", "nginx"], "r.log", 0.0)
    dead = ProcessStatus(record, alive=False)
    alone = local_text(LocalModelStatus("iris", dead, None, front_pid=77, last_stable="v1"),
                       "rollout start iris:v2 --home /h")
    nothing = local_text(LocalModelStatus("iris", dead, None), "rollout start iris:v1")

    assert "pid 4242 DEAD" in alone and ("nginx   pid 77 still serves the dead router's last split; "
                                         "`rollout start iris:v2 --home /h` brings the router back") in alone
    assert "nothing serves the router's ports; `rollout start iris:v1` brings the router back" in nothing
    assert "nothing serves" not in alone


def test_local_status_says_who_retires_a_version_whose_scale_down_delay_runs():
    from rollout.cli.report import local_text
    from rollout.platforms.local.platform import LocalModelStatus, ProcessStatus
    from rollout.platforms.local.supervisor import ProcessRecord

    servers = [ProcessStatus(ProcessRecord("iris", v, "server", pid, port, ["server"], "s.log", 0.0), alive=True)
               for v, pid, port in (("v1", 11, 9001), ("v2", 12, 9002))]
    row = LocalModelStatus("iris", None, None, servers=servers)
    due = 1_700_000_600.0

    alone = local_text(row, retiring={"v1": due}, now=due - 60, where=" --home /h")
    carried = local_text(row, retiring={"v1": due}, controller=True, now=due - 60)
    overdue = local_text(row, retiring={"v1": due}, now=due + 60)

    assert ("v1       pid 11 port 9001 running; retirement due 2023-11-14 22:23:20 UTC (scale_down_delay_s): "
            "the next `rollout start iris:... --home /h` retires it, or a controller (none runs)") in alone
    assert ("v1       pid 11 port 9001 running; retirement due 2023-11-14 22:23:20 UTC (scale_down_delay_s): "
            "the controller retires it") in carried
    assert "retirement overdue since 2023-11-14 22:23:20 UTC" in overdue
    assert "v2       pid 12 port 9002 running\n" in alone + "\n" and "retire" not in alone.splitlines()[-1]
