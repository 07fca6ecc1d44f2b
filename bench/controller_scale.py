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
import json
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.clock import SystemClock  # noqa: E402
from rollout.controller import Controller  # noqa: E402
from rollout.engine import Engine, Services  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402
from rollout.spec import parse_spec  # noqa: E402
from rollout.state import ModelState, Phase  # noqa: E402
from rollout.testing import MemoryStore, ScriptedProvider, SimPlatform, VirtualClock  # noqa: E402

HORIZON_S = 3600.0
NOTE = ("The controller does more than the baseline: it retires each old stable when its scale_down_delay_s has passed (the start loops exit at promotion and never do; +1 save per promoted rollout) and lists the state home at each scan (every 600 s here), reconciling the models whose state changed since (commands, new rollouts) and every model once per 300 s. Peak heap: one small summary per model for /metrics, reconciler memory dropped when a rollout ends.")


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
    ap.add_argument("--rollouts", type=int, default=None, help="default 1000 (virtual time), 100 (--kubernetes)")
    ap.add_argument("--kubernetes", action="store_true", help="on the fake API server (real time)")
    ap.add_argument("--interval", type=float, default=10.0, help="--kubernetes: analysis.interval_s")
    ap.add_argument("--k8s-child", choices=["controller", "start-loops"], help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.k8s_child:
        return _k8s_child(args.k8s_child, args.rollouts, args.interval, args.kubeconfig, args.stats)
    if args.kubernetes:
        return k8s_main(args.rollouts or 100, args.interval)
    n = args.rollouts or 1000
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


# ====================================================================== on the fake API server
#
#   python bench/controller_scale.py --kubernetes [--rollouts 100] [--interval 10]
#
# N concurrent canaries on the fake Kubernetes API server (tests/kubernetes), the server
# in this process, the controller in a child process of its own (so its CPU and memory are
# its own): the `rollout-controller` leader Lease, one timer queue, ConfigMap state and a
# Lease lock per model, real KubernetesPlatform calls (router gateway-api). Each rollout is
# started detached first (the `rollout start --detach` work, in the child, counted apart).
# Baseline in the same run: the same rollouts as one `rollout start` loop each (a thread per
# rollout in one child process, as 100 CI jobs would run them), on a fresh fake cluster.
# Requests are counted on the server, per rollout per minute of the rollouts' lifetime, split
# platform (Deployments, Services, HTTPRoutes, Pods) / state (ConfigMaps) / lease (Leases).

K8S_NAMESPACE = "models"
TIMEOUT_S = 900.0  # for the rollouts to end
SETUP_THREADS = 10  # deploying v1 and the detached starts: waits on readiness, so in parallel
IDLE_S = 60.0  # how long the idle controller is watched after the last retirement


def k8s_spec(model: str, interval_s: float, kubeconfig: str):  # type: ignore[no-untyped-def]
    return parse_spec({
        "model": model, "registry": {"type": "git", "url": "/nonexistent"},
        "platform": {"type": "kubernetes", "namespace": K8S_NAMESPACE, "router": "gateway-api",
                     "gateway": {"name": "public"}, "replicas": 2, "ready_timeout_s": 60, "kubeconfig": kubeconfig,
                     "pod_monitor": False},
        "strategy": {"type": "canary", "weights": [10, 25, 50], "scale_down_delay_s": 30},
        "analysis": {"interval_s": interval_s, "duration_s": 3 * interval_s, "metrics": [
            {"name": "error-rate", "provider": "sim", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}}]},
    })


def _k8s_models(n: int) -> tuple[list[str], set[str]]:
    models = [f"model-{i:03d}" for i in range(n)]
    return models, {m for i, m in enumerate(models) if i % 3 == 0}


def _k8s_child(mode: str, n: int, interval_s: float, kubeconfig: str, stats_path: str) -> None:
    """The controller (or the start loops) in its own process; stats written on SIGTERM / at the end."""
    import json
    import signal
    import threading

    from rollout.platforms.kubernetes.client import Kube
    from rollout.controller.kubernetes import LeaseElector, lead_and_reconcile
    from rollout.platforms.kubernetes.platform import KubernetesPlatform
    from rollout.platforms.kubernetes.state import ConfigMapStateStore
    from rollout.state import holder_identity

    models, bad = _k8s_models(n)
    kube = Kube.connect(K8S_NAMESPACE, kubeconfig=kubeconfig)
    store = ConfigMapStateStore(kube, lease_duration_s=30)
    specs = {m: k8s_spec(m, interval_s, kubeconfig) for m in models}

    def services(model: str, ms: ModelState | None = None) -> Services:
        provider = ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.2 if model in bad else 0.01}})
        own = store if mode == "controller" else ConfigMapStateStore(kube, lease_duration_s=30)  # a CI job each
        return Services(store=own, platform=KubernetesPlatform(model, specs[model].platform, kube),
                        providers={"sim": provider}, poll_s=1.0)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out: dict[str, float] = {}
    cpu0 = time.process_time()
    if mode == "controller":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(SETUP_THREADS) as pool:  # `rollout start --detach` of each: as many CI jobs would
            list(pool.map(lambda m: Engine(specs[m], services(m)).start(
                ModelVersion(m, "v2", f"s3://models/{m}/v2"), detach=True), models))
        out["detach_cpu_s"] = time.process_time() - cpu0
        print("detached", flush=True)
        cpu1 = time.process_time()
        identity = holder_identity("controller")
        controller = Controller(store, services, SystemClock(), holder=identity)
        lead_and_reconcile(controller, LeaseElector(kube, identity, duration_s=15), K8S_NAMESPACE, stop, 15.0,
                           echo=lambda line: None)
        out.update(cpu_s=time.process_time() - cpu1, reconciles=controller.stats.reconciles,
                   errors=controller.stats.errors, skipped_locked=controller.stats.skipped_locked)
    else:
        print("detached", flush=True)
        threads = [threading.Thread(target=lambda m=m: Engine(specs[m], services(m)).start(
            ModelVersion(m, "v2", f"s3://models/{m}/v2"))) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.update(cpu_s=time.process_time() - cpu0)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(stats_path).write_text(json.dumps(out))


def _k8s_run(mode: str, n: int, interval_s: float) -> dict[str, object]:
    import json
    import os
    import subprocess
    import tempfile
    from collections import Counter

    import yaml

    from rollout.names import state_name
    from rollout.platforms.kubernetes.client import Kube
    from rollout.platforms.kubernetes.platform import KubernetesPlatform
    from rollout.platforms.kubernetes.state import STATE_KEY, ConfigMapStateStore
    from tests.kubernetes.fake_apiserver import FakeApiServer, FakeCluster, FakeKubelet

    models, bad = _k8s_models(n)
    cluster = FakeCluster()
    cluster.create_namespace(K8S_NAMESPACE)
    kubelet = FakeKubelet(cluster, delay_s=0.2).start()
    with FakeApiServer(cluster) as server, tempfile.TemporaryDirectory() as tmp:
        kc = Path(tmp) / "kubeconfig"
        kc.write_text(yaml.safe_dump(server.kubeconfig(K8S_NAMESPACE)))
        kube = Kube.connect(K8S_NAMESPACE, kubeconfig=str(kc))
        store = ConfigMapStateStore(kube, lease_duration_s=30)
        def first(m: str) -> None:  # v1 everywhere (not counted)
            spec = k8s_spec(m, interval_s, str(kc))
            Engine(spec, Services(store=store, platform=KubernetesPlatform(m, spec.platform, kube))).start(
                ModelVersion(m, "v1", f"s3://models/{m}/v1"))

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(first, models))

        def state(m: str) -> ModelState:
            cm = cluster.find("configmaps", state_name(m), K8S_NAMESPACE)
            return ModelState.model_validate_json(cm["data"][STATE_KEY])

        def ended(m: str) -> bool:
            ms = state(m)
            r = ms.rollout or (ms.history[0] if ms.history else None)
            return bool(r and r.candidate.version == "v2" and not r.phase.active)

        def retired(m: str) -> bool:  # only the stable version still has replicas
            live = [d for d in cluster.all("deployments", K8S_NAMESPACE)
                    if d["metadata"]["labels"].get("app.kubernetes.io/name") == m and d["spec"]["replicas"]]
            return [d["metadata"]["labels"]["app.kubernetes.io/version"] for d in live] == [state(m).stable.version]

        stats_path = Path(tmp) / "stats.json"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        mark0 = cluster.mark()
        child = subprocess.Popen([sys.executable, __file__, "--k8s-child", mode, "--rollouts", str(n), "--interval",
                                  str(interval_s), "--kubeconfig", str(kc), "--stats", str(stats_path)],
                                 env=env, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "detached"
        mark1, t1 = cluster.mark(), time.time()
        deadline = t1 + TIMEOUT_S
        while not all(ended(m) for m in models):
            if time.time() > deadline or child.poll() not in (None, 0):
                child.kill()
                where = {m: (r.phase.value, r.step_index) if (r := state(m).rollout) else None for m in models}
                raise SystemExit(f"{mode}: the rollouts did not end (child exit {child.poll()}): {where}")
            time.sleep(0.5)
        mark_end, t_end = cluster.mark(), time.time()
        mark2, t2 = mark_end, t_end
        if mode == "controller":
            while not all(retired(m) for m in models) and time.time() < deadline:
                time.sleep(0.5)
            mark2, t2 = cluster.mark(), time.time()  # the idle window starts after the last retirement
            time.sleep(IDLE_S)  # an idle controller: what it costs when nothing is due
            mark3, t3 = cluster.mark(), time.time()
            child.send_signal(15)
        else:
            mark3, t3 = mark2, t2
        child.wait(timeout=120)
        stats = json.loads(stats_path.read_text())
        right = sum(((state(m).rollout or state(m).history[0]).phase is (Phase.ROLLED_BACK if m in bad else Phase.PROMOTED))
                    and state(m).stable.version == ("v1" if m in bad else "v2") for m in models)
        n_retired = sum(retired(m) for m in models)
        reqs = [r for r in cluster.requests if r.verb != "discovery"]
        kubelet.stop()

    def category(r) -> str:  # type: ignore[no-untyped-def]
        return "lease" if r.resource == "leases" else "state" if r.resource == "configmaps" else "platform"

    def window(a: int, b: int) -> list:  # type: ignore[type-arg]
        return [r for r in cluster.requests[a:b] if r.verb != "discovery"]

    detach, active, idle = window(mark0, mark1), window(mark1, mark_end), window(mark2, mark3)
    per_s = Counter(int(r.at) for r in active)
    return {
        "mode": mode, "n": n, "right": right, "retired": n_retired, "active_min": (t_end - t1) / 60,
        "idle_min": (t3 - t2) / 60, "detach": Counter(category(r) for r in detach),
        "active": Counter(category(r) for r in active), "idle": Counter(category(r) for r in idle),
        "active_detail": Counter(f"{r.verb} {r.resource}" for r in active),
        "leader": sum(r.resource == "leases" and r.name == "rollout-controller" for r in reqs),
        "peak_rps": max(per_s.values()) if per_s else 0, "mean_rps": len(active) / max(t_end - t1, 1e-9),
        **stats,
    }


def k8s_main(n: int, interval_s: float) -> None:
    c = _k8s_run("controller", n, interval_s)
    print(json.dumps({k: v for k, v in c.items()}, default=dict), flush=True)  # raw, before the long baseline
    b = _k8s_run("start-loops", n, interval_s)

    def rate(r: dict, cat: str) -> str:  # type: ignore[type-arg]
        return f"{r['active'][cat] / n / r['active_min']:.1f}"

    def per(r: dict) -> str:  # type: ignore[type-arg]
        return " / ".join(f"{r['active'][cat] / n:.0f}" for cat in ("platform", "state", "lease"))

    def total(r: dict) -> float:  # type: ignore[type-arg]
        return sum(r["active"].values()) / n / r["active_min"]

    lines = [
        f"# One controller, {n} concurrent rollouts on the fake Kubernetes API server", "",
        f"`python bench/controller_scale.py --kubernetes --rollouts {n} --interval {interval_s:g}` - fake API server "
        "(tests/kubernetes) in the bench process, the controller in a child process; router gateway-api, "
        f"canary 10/25/50/100 with 3 analysis steps of {3 * interval_s:g} s measured every {interval_s:g} s "
        "(scripted provider), scale_down_delay_s 30, 1 in 3 candidates bad. Baseline in the same run: one "
        "`rollout start` loop per rollout (a thread each in one child process, as that many CI jobs), fresh cluster.", "",
        "| | controller | start loops (baseline) |", "|---|---|---|",
        f"| rollouts with the right outcome | {c['right']}/{n} | {b['right']}/{n} |",
        f"| old versions retired after the delay | {c['retired']}/{n} | {b['retired']}/{n} |",
        f"| wall time until every rollout ended | {c['active_min']:.1f} min | {b['active_min']:.1f} min |",
        f"| API requests per rollout per minute, platform | {rate(c, 'platform')} | {rate(b, 'platform')} |",
        f"| ... state (ConfigMaps) | {rate(c, 'state')} | {rate(b, 'state')} |",
        f"| ... lease (Leases) | {rate(c, 'lease')} | {rate(b, 'lease')} |",
        f"| ... all | {total(c):.1f} | {total(b):.1f} |",
        f"| API requests per rollout, whole rollout (platform / state / lease) | {per(c)} | {per(b)} |",
        f"| requests/s from the process, mean / peak second | {c['mean_rps']:.1f} / {c['peak_rps']} | "
        f"{b['mean_rps']:.1f} / {b['peak_rps']} |",
        f"| CPU of the process | {c['cpu_s']:.1f} s | {b['cpu_s']:.1f} s |",
        f"| CPU per reconcile | {1000 * c['cpu_s'] / max(c['reconciles'], 1):.1f} ms ({c['reconciles']} reconciles) | - |",
        f"| peak memory of the process (max RSS) | {c['max_rss_mb']:.0f} MiB | {b['max_rss_mb']:.0f} MiB |",
        f"| reconcile errors / model busy (skipped) | {c['errors']} / {c['skipped_locked']} | - |", "",
        f"Ratio of API requests per rollout per minute, controller / start loops: {total(c) / total(b):.2f}. "
        f"The `start --detach` of all {n} (before the controller, not in the rates above): "
        + ", ".join(f"{k} {v}" for k, v in sorted(c["detach"].items())) + f" requests, {c['detach_cpu_s']:.1f} s CPU. "
        f"Leader Lease requests (in 'lease'): {c['leader']}. An idle controller with {n} ended rollouts (after the last retirement), "
        f"for {c['idle_min']:.1f} min: " + ", ".join(f"{k} {v}" for k, v in sorted(c["idle"].items())) + " requests.", "",
        "Controller requests while the rollouts ran, by verb and resource: "
        + ", ".join(f"{k} {v}" for k, v in sorted(c["active_detail"].items())) + ".", "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "controller_scale_k8s.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
