"""API requests per rollout step and per rollback for each Kubernetes router, counted on
the fake API server, and the wall time of `rollout rollback` (the real CLI, in process)
against it.

    /work/main/.venv/bin/python bench/k8s_requests.py [--runs 5]

Requests are split into "platform" (Deployments, Services, routes, Pods) and "state"
(ConfigMap reads and writes, Lease), because the engine reads the state ConfigMap on
every loop iteration to pick up promote/abort requests from other commands - that
count depends on how long a step waits, not on the platform.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kubernetes.fake_apiserver import FakeApiServer, FakeCluster, FakeKubelet  # noqa: E402
from tests.kubernetes.helpers import NAMESPACE, make_rig, make_spec, version  # noqa: E402

STATE = ("configmaps", "leases")


def split(counts: Counter[str]) -> tuple[int, int, str]:
    platform = sum(n for k, n in counts.items() if k.split()[1] not in STATE)
    state = sum(n for k, n in counts.items() if k.split()[1] in STATE)
    detail = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()) if k.split()[1] not in STATE)
    return platform, state, detail


def per_step(router: str, strategy: dict) -> list[tuple[str, Counter[str]]]:
    cluster = FakeCluster()
    cluster.create_namespace(NAMESPACE)
    with FakeApiServer(cluster) as server, tempfile.TemporaryDirectory() as tmp:
        kubelet = FakeKubelet(cluster, delay_s=0.01).start()
        try:
            kc = Path(tmp) / "kubeconfig"
            kc.write_text(yaml.safe_dump(server.kubeconfig(NAMESPACE)))
            rig = make_rig(cluster, kc, make_spec(router, strategy=strategy))
            rig.engine().start(version("v1"))
            marks: list[tuple[str, int]] = []
            engine = rig.engine()
            engine.s.listeners.append(lambda e, ms: marks.append((e.message, cluster.mark()))
                                      if e.kind in ("step", "step_done") else None)
            start = cluster.mark()
            engine.start(version("v2"))
            out, prev = [], start
            for (msg, at) in marks:
                if msg.startswith("step "):
                    prev = at
                else:
                    out.append((msg.split(":")[0][:40], cluster.counts(prev)
                                - cluster.counts(at)))
            # counts(prev) - counts(at) = requests in [prev, at)
            return out
        finally:
            kubelet.stop()


def rollback_cost(router: str, runs: int) -> tuple[Counter[str], list[float]]:
    """Promote v2, then `rollout rollback` (CLI in process): requests and wall time."""
    from typer.testing import CliRunner

    from rollout.cli import cli
    from tests.kubernetes.test_cli import make_registry

    times, counts = [], Counter()
    for _ in range(runs):
        cluster = FakeCluster()
        cluster.create_namespace(NAMESPACE)
        with FakeApiServer(cluster) as server, tempfile.TemporaryDirectory() as tmp:
            kubelet = FakeKubelet(cluster, delay_s=0.01).start()
            try:
                t = Path(tmp)
                kc = t / "kubeconfig"
                kc.write_text(yaml.safe_dump(server.kubeconfig(NAMESPACE)))
                registry = make_registry(t)
                plat = {"type": "kubernetes", "namespace": NAMESPACE, "router": router, "replicas": 2,
                        "kubeconfig": str(kc), "ready_timeout_s": 10}
                if router == "gateway-api":
                    plat["gateway"] = {"name": "public"}
                spec = t / "rollout.yaml"
                spec.write_text(yaml.safe_dump({
                    "model": "fraud", "registry": {"type": "git", "url": str(registry)}, "platform": plat,
                    "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0}}))
                runner = CliRunner()
                home = ["--home", str(t / "home")]
                for v in ("v1", "v2"):
                    r = runner.invoke(cli, ["start", f"fraud:{v}", "-f", str(spec), *home])
                    assert r.exit_code == 0, r.output
                mark = cluster.mark()
                t0 = time.perf_counter()
                r = runner.invoke(cli, ["rollback", "fraud", "-f", str(spec), *home])
                times.append(time.perf_counter() - t0)
                assert r.exit_code == 0, r.output
                counts = cluster.counts(mark)
            finally:
                kubelet.stop()
    return counts, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    strategies = {
        "canary 20,50": {"type": "canary", "weights": [20, 50], "scale_down_delay_s": 0},
        "shadow 40%": {"type": "shadow", "mirror_percent": 40, "scale_down_delay_s": 0},
    }
    print("## API requests per rollout step (platform | state), fake API server\n")
    for router in ("service", "gateway-api", "istio"):
        for name, strategy in strategies.items():
            if router == "service" and strategy["type"] == "shadow":
                continue
            print(f"### {router}, {name}")
            for msg, counts in per_step(router, strategy):
                p, s, detail = split(counts)
                print(f"- {msg:<42} platform {p:>2} | state {s:>3}   ({detail})")
            print()
    print(f"## `rollout rollback` after a promoted canary (CLI in process, {args.runs} runs)\n")
    for router in ("service", "gateway-api", "istio"):
        counts, times = rollback_cost(router, args.runs)
        p, s, detail = split(counts)
        print(f"- {router:<12} requests: platform {p}, state {s} ({detail}); wall time median "
              f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


if __name__ == "__main__":
    main()
