"""How far does one controller process go? A figure, not a test.

N concurrent canaries (default 1,000) in virtual time, each a model of its own with a
simulated platform and a scripted provider (rollout/testing.py), all detached and then
carried by one ``rollout.controller.Controller`` from its single timer queue. One in
three candidates is bad (error rate 20% against a 5% threshold) and must be rolled back;
the others must be promoted.

Reported: CPU time per reconcile and per rollout, peak memory (tracemalloc peak of the
Python heap, and the process's max RSS), whether every rollout reached the right outcome.
Baseline in the same run: the same rollouts driven the pre-controller way, one
`rollout start` loop (Engine.start) per rollout, one after the other; the ratio is CPU
per rollout, controller / start loops.

Run: ``python bench/controller_scale.py [--rollouts 1000]``; writes
bench/results/controller_scale.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.controller import Controller  # noqa: E402
from rollout.engine import Engine, Services  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402
from rollout.spec import parse_spec  # noqa: E402
from rollout.state import ModelState, Phase  # noqa: E402
from rollout.testing import MemoryStore, ScriptedProvider, SimPlatform, VirtualClock  # noqa: E402

HORIZON_S = 3600.0
NOTE = ("The controller does more than the baseline: it retires each old stable when its scale_down_delay_s has passed (the start loops exit at promotion and never do; +1 save per promoted rollout) and re-reads every model at each scan of the state home (every 600 s here) to notice commands and new rollouts. Peak heap: one small summary per model for /metrics, reconciler memory dropped when a rollout ends.")


def spec_for(model: str):  # type: ignore[no-untyped-def]
    return parse_spec({
        "model": model, "registry": {"type": "git", "url": "/nonexistent"},
        "strategy": {"type": "canary", "weights": [10, 25, 50], "scale_down_delay_s": 300},
        "analysis": {"interval_s": 30, "duration_s": 120, "metrics": [
            {"name": "error-rate", "provider": "sim", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}},
            {"name": "latency", "provider": "sim", "query": "latency", "dry_run": True,
             "judge": {"type": "threshold", "max": 0.5}}]},
    })


class Fleet:
    def __init__(self, n: int) -> None:
        self.clock = VirtualClock()
        self.store = MemoryStore()
        self.platforms: dict[str, SimPlatform] = {}
        self.models = [f"model-{i:04d}" for i in range(n)]
        self.bad = {m for i, m in enumerate(self.models) if i % 3 == 0}

    def services(self, model: str, ms: ModelState | None = None) -> Services:
        platform = self.platforms.setdefault(model, SimPlatform(model))
        rate = 0.2 if model in self.bad else 0.01
        provider = ScriptedProvider({"error_rate": {"v1": 0.01, "v2": rate}, "latency": {"v1": 0.1, "v2": 0.1}})
        return Services(store=self.store, platform=platform, providers={"sim": provider}, clock=self.clock,
                        poll_s=30.0)

    def deploy_v1(self) -> None:
        for m in self.models:
            Engine(spec_for(m), self.services(m)).start(ModelVersion(m, "v1", "sim://v1"))

    def right(self) -> int:
        ok = 0
        for m in self.models:
            ms = self.store.load(m)
            want = Phase.ROLLED_BACK if m in self.bad else Phase.PROMOTED
            last = ms.history[0] if ms.history else None
            stable = "v1" if m in self.bad else "v2"
            ok += bool(last and last.candidate.version == "v2" and last.phase is want
                       and ms.stable and ms.stable.version == stable and self.platforms[m].traffic.stable == stable)
        return ok


def run_controller(n: int) -> dict[str, float]:
    fleet = Fleet(n)
    fleet.deploy_v1()
    tracemalloc.start()
    cpu0 = time.process_time()
    for m in fleet.models:
        Engine(spec_for(m), fleet.services(m)).start(ModelVersion(m, "v2", "sim://v2"), detach=True)
    controller = Controller(fleet.store, fleet.services, fleet.clock, scan_s=600.0)
    controller.scan()
    end = fleet.clock.now() + HORIZON_S
    while fleet.clock.now() < end:
        controller.run_due()
        fleet.clock.sleep(max(0.0, min(controller.next_wake(), end) - fleet.clock.now()))
    cpu = time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"cpu_s": cpu, "reconciles": controller.stats.reconciles + n, "peak_mb": peak / 2**20,
            "right": fleet.right(), "errors": controller.stats.errors, "saves": fleet.store.saves}


def run_start_loops(n: int) -> dict[str, float]:
    fleet = Fleet(n)
    fleet.deploy_v1()
    tracemalloc.start()  # same instrumentation as the controller run, so CPU compares fairly
    cpu0 = time.process_time()
    for m in fleet.models:
        Engine(spec_for(m), fleet.services(m)).start(ModelVersion(m, "v2", "sim://v2"))
    cpu = time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"cpu_s": cpu, "right": fleet.right(), "peak_mb": peak / 2**20, "saves": fleet.store.saves}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=1000)
    args = ap.parse_args()
    n = args.rollouts
    c = run_controller(n)
    b = run_start_loops(n)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"# One controller, {n} concurrent rollouts (virtual time)", "",
        "`python bench/controller_scale.py --rollouts %d` - simulated platform and scripted provider "
        "(rollout/testing.py), in-memory store with deep-copy save, canary 10/25/50/100 with 4 analysis steps "
        "of 120 s measured every 30 s, 1 in 3 candidates bad. Baseline: the same rollouts as one `rollout start` "
        "loop each, sequentially, in the same process." % n, "",
        "| | controller | start loops (baseline) |", "|---|---|---|",
        f"| rollouts with the right outcome | {c['right']}/{n} | {b['right']}/{n} |",
        f"| CPU total | {c['cpu_s']:.2f} s | {b['cpu_s']:.2f} s |",
        f"| CPU per rollout | {1000 * c['cpu_s'] / n:.2f} ms | {1000 * b['cpu_s'] / n:.2f} ms |",
        f"| reconciles | {c['reconciles']:.0f} | - |",
        f"| CPU per reconcile | {1000 * c['cpu_s'] / c['reconciles']:.3f} ms | - |",
        f"| state saves | {c['saves']:.0f} | {b['saves']:.0f} |",
        f"| peak Python heap (tracemalloc) | {c['peak_mb']:.1f} MiB | {b['peak_mb']:.1f} MiB |",
        f"| reconcile errors | {c['errors']:.0f} | - |", "",
        f"Ratio CPU per rollout, controller / start loops: {c['cpu_s'] / b['cpu_s']:.2f}. "
        f"Process max RSS (both runs): {rss_mb:.0f} MiB.", "",
        NOTE, "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "controller_scale.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
