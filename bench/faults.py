"""Fault figures: what callers see when something that serves a canary is killed, and
where a `rollout start` killed at each kind of step ends up.

Everything is real: the `rollout` CLI as a subprocess, the local router, the builtin V2
server, live traffic from the project's traffic generator (rollout.demo.traffic), a git
registry with real iris models. Two parts, in one run:

1. Serving faults (``--trials`` each): `kill -9` of the stable server, the router, or the
   candidate server while a canary holds 30% on the candidate. Per trial: requests the
   callers saw fail (HTTP status not 200, or no answer), the time from the kill to the
   last failed request (time to repair, as callers see it), the time to the engine's
   `repaired` event, and how the rollout ended.
2. `kill -9` of `rollout start` at every step kind (setWeight, pause, analysis, gate,
   promote, rollback), then `rollout start` of the same version again; the outcome is
   compared with the same rollout run without a kill, side by side in this run.

Run: nice .venv/bin/python bench/faults.py [--trials 3] [--out bench/results/faults.md]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollout.demo.models import make_bad_model, make_good_model  # noqa: E402
from rollout.demo.traffic import LoadGenerator  # noqa: E402
from rollout.platforms.local import supervisor as sv  # noqa: E402
from rollout.platforms.local.platform import LocalPlatform  # noqa: E402
from rollout.registry.git import publish_version  # noqa: E402
from rollout.state import FileStateStore  # noqa: E402

RATE = 60.0  # requests per second from the traffic generator
DATA_PLANE = ["auto"]  # platform.data_plane of every spec (--data-plane)
GRPC_RATE = 20.0  # gRPC ModelInfer calls per second beside it (one client, one at a time)
INTERVAL_S = 1.0  # analysis interval: how often the engine looks at what serves


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rollout", *args], env=_env(home), capture_output=True, text=True,
                          timeout=timeout, check=False)


def cli_background(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rollout", *args], env=_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _env(home: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")},
            "ROLLOUT_HOME": str(home), "PYTHONPATH": str(ROOT)}


def state(home: Path) -> Any:
    try:
        return FileStateStore(home).load("iris")
    except Exception:  # a state file being replaced: read again next time
        return None


def wait_for(check: Any, timeout_s: float = 120, every_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError("condition not met in time")


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the gate answers 200 to anything
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@dataclass
class Rig:
    root: Path
    registry: Path
    gate_url: str

    def spec(self, name: str, steps: list[dict[str, Any]], metrics: bool = True) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "model": "iris", "registry": {"type": "git", "url": str(self.registry)},
            "platform": {"type": "local", "server": "builtin", "ready_timeout_s": 60, "data_plane": DATA_PLANE[0]},
            "strategy": {"type": "canary", "steps": steps},
            "analysis": {"interval_s": INTERVAL_S, "duration_s": 3,
                         "metrics": [{"name": "error-rate", "query": "error_rate",
                                      "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}] if metrics else []},
        }, sort_keys=False))
        return path

    def home(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


def make_rig(root: Path) -> Rig:
    registry = root / "registry"
    models = root / "models"
    publish_version(registry, "iris", "v1", make_good_model(models / "good", seed=0))
    publish_version(registry, "iris", "v2", make_good_model(models / "other", seed=1))
    # bad and slow: fails half its requests, each 1.5 s late (a rollback then drains for seconds)
    publish_version(registry, "iris", "v3", make_bad_model(models / "bad", error_rate=0.5, extra_latency_ms=1500))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Rig(root, registry, f"http://127.0.0.1:{server.server_address[1]}/gate")


def _pid(home: Path, what: str) -> int:
    path = sv.router_record_path(home, "iris") if what == "router" else sv.version_record_path(home, "iris", what)
    record = sv.read_record(path)
    assert record is not None, f"no record of {what}"
    return record.pid


def _start_stable(rig: Rig, home: Path, spec: Path) -> LoadGenerator:
    result = cli(home, "start", "iris:v1", "-f", str(spec))
    assert result.returncode == 0, result.stderr
    url = f"{LocalPlatform('iris', home).endpoint()}/v2/models/iris/infer"
    return LoadGenerator(url, rate_per_s=RATE, workers=4, timeout_s=5).start()


class GrpcLoad:
    """gRPC ModelInfer calls (Triton's client) at about ``rate_per_s`` beside the REST load,
    so a fault's effect on gRPC callers is measured too; each call: (sent at, status name)."""

    def __init__(self, target: str, rate_per_s: float = GRPC_RATE) -> None:
        self.target, self.interval = target, 1.0 / rate_per_s
        self.calls: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="grpc-load")

    def start(self) -> "GrpcLoad":
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(10)
        return list(self.calls)

    def _work(self) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.target)
        inp = grpcclient.InferInput("input-0", [1, 4], "FP64")
        inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
        try:
            while not self._stop.wait(self.interval):
                at = time.time()
                try:
                    client.infer("iris", [inp], client_timeout=5)
                    self.calls.append((at, "OK"))
                except InferenceServerException as exc:
                    self.calls.append((at, str(exc.status())))
        finally:
            client.close()


# ----------------------------------------------------------------------------- part 1

SERVING_STEPS = [{"set_weight": 30}, {"pause": {"duration_s": 15}}, {"analysis": {}}, {"set_weight": 60},
                 {"pause": {"duration_s": 3}}]
TARGETS = {"stable": "v1", "router": "router", "candidate": "v2"}


def serving_trial(rig: Rig, target: str) -> dict[str, Any]:
    home = rig.home(f"serve-{target}")
    spec = rig.spec(f"serving-{target}", SERVING_STEPS)
    load = _start_stable(rig, home, spec)
    grpc_target = LocalPlatform("iris", home).grpc_endpoint()
    grpc_load = GrpcLoad(grpc_target).start() if grpc_target else None
    proc = cli_background(home, "start", "iris:v2", "-f", str(spec))
    try:
        wait_for(lambda: (r := (state(home) or _Empty).rollout) and r.step_index == 1 and r.step_started_at)
        time.sleep(2.0)
        t_kill = time.time()
        os.kill(_pid(home, TARGETS[target]), signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
        time.sleep(1.0)
    finally:
        samples = load.stop()
        calls = grpc_load.stop() if grpc_load else []
        if proc.poll() is None:
            proc.kill()
        cli(home, "local", "down", "iris")
    after = [s for s in samples if s.at >= t_kill]
    failed = [s for s in after if s.status != 200]
    ms = state(home)
    r = ms.history[0] if ms and ms.history else (ms.rollout if ms else None)
    repaired = [e.at - t_kill for e in (r.events if r else []) if e.kind in ("repaired", "rolled_back") and e.at >= t_kill]
    return {
        "target": target, "load": os.getloadavg()[0], "exit": proc.returncode, "phase": r.phase.value if r else "-",
        "errors": len(failed), "requests": len(after),
        "grpc_errors": sum(1 for at, status in calls if at >= t_kill and status != "OK"),
        "grpc_requests": sum(1 for at, _ in calls if at >= t_kill),
        "grpc_codes": sorted({status for at, status in calls if at >= t_kill and status != "OK"}),
        "repair_s": (max(s.at + s.latency_s for s in failed) - t_kill) if failed else 0.0,
        "engine_s": min(repaired) if repaired else None,
        "reason": (r.reason if r else "")[:120],
        "stderr": err[-300:] if proc.returncode not in (0, 3) else "",
    }


class _Empty:
    rollout = None


# ----------------------------------------------------------------------------- part 2

def kill_steps(rig: Rig) -> list[dict[str, Any]]:
    return [{"set_weight": 30}, {"pause": {"duration_s": 3}}, {"analysis": {}}, {"gate": {"url": rig.gate_url}},
            {"set_weight": 60}]


def _kind_now(home: Path) -> str | None:
    """The kind of moment the rollout is at: the step kind, or 'rollback' while an ending is recorded."""
    ms = state(home)
    r = ms.rollout if ms else None
    if r is None or not r.phase.active:
        return None
    if r.ending is not None:
        return "rollback"
    step = r.current_step()
    if step is None:
        return None
    return {"traffic": "setWeight"}.get(step.kind, step.kind)


def kill_trial(rig: Rig, kind: str, kill: bool) -> dict[str, Any]:
    """One rollout of v2 (v3 for `rollback`), killed when it reaches ``kind`` if ``kill``,
    then started again; its outcome."""
    home = rig.home(f"kill-{kind}")
    spec = rig.spec(f"kill-{kind}", kill_steps(rig))
    version = "v3" if kind == "rollback" else "v2"
    load = _start_stable(rig, home, spec)
    seen = None
    t_kill = float("inf")
    try:
        proc = cli_background(home, "start", f"iris:{version}", "-f", str(spec))
        if kill:
            try:
                seen = wait_for(lambda: (k := _kind_now(home)) == kind and k, timeout_s=120, every_s=0.002)
                os.kill(proc.pid, signal.SIGKILL)
                t_kill = time.time()
            except TimeoutError:
                seen = None
        first = proc.wait(timeout=180)
        router = LocalPlatform("iris", home).get_traffic()
        rerun = cli(home, "start", f"iris:{version}", "-f", str(spec)) if kill else None
        time.sleep(0.5)
    finally:
        samples = load.stop()
        cli(home, "local", "down", "iris")
    ms = state(home)
    r = ms.history[0] if ms and ms.history else None
    # After a kill inside a rollback the rerun must continue the rollback: no plan step may start again
    # (which would re-apply the canary split).
    canary_again = bool(kill and kind == "rollback" and r is not None
                        and any(e.kind == "step" and e.at > t_kill for e in r.events))
    return {
        "kind": kind, "load": os.getloadavg()[0], "killed": kill, "landed": seen or ("-" if kill else "no kill"), "first_exit": first,
        "split_at_kill": f"{router.candidate} {router.weight}%" if router and router.candidate else
                         (router.stable if router else "-"),
        "exit": rerun.returncode if rerun is not None else first,
        "phase": r.phase.value if r else "-", "errors": sum(1 for s in samples if s.status != 200),
        "requests": len(samples), "canary_again": canary_again,
        "resumed": bool(rerun and ("resuming" in rerun.stdout or "rolled" in rerun.stdout.lower())),
    }


# ----------------------------------------------------------------------------- report

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _load(rows: list[dict[str, Any]]) -> str:
    loads = [r["load"] for r in rows if "load" in r]
    return f" (1-min load average {min(loads):.0f}-{max(loads):.0f})" if loads else ""


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(serving: list[dict[str, Any]], kills: list[dict[str, Any]], trials: int) -> str:
    lines = ["# Fault figures", "",
             f"`nice .venv/bin/python bench/faults.py --trials {trials} --data-plane {DATA_PLANE[0]}` on a shared 2-core machine{_load(serving + kills)} "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Real CLI, local router, builtin V2 server, "
             f"{RATE:g} requests/s from rollout.demo.traffic; data plane `{DATA_PLANE[0]}`; the engine looks at what serves every "
             f"analysis interval ({INTERVAL_S:g} s here).", "",
             "## kill -9 of what serves, while a canary holds 30% on the candidate", "",
             "Time to repair: from the kill to the end of the last request that failed (as callers see it); "
             "engine: from the kill to the engine's `repaired` (or `rolled_back`) event.", "",
             f"gRPC: {GRPC_RATE:g} ModelInfer calls/s from Triton's client beside the REST load, counted from the kill.", "",
             "| killed | trials | outcomes | failed requests: median (max) | of requests | time to repair s: median (max) | engine s: median (max) | gRPC failed / calls |",
             "|---|---|---|---|---|---|---|---|"]
    for target in TARGETS:
        rows = [t for t in serving if t["target"] == target]
        if not rows:
            continue
        outcomes = ", ".join(f"{p} {sum(1 for t in rows if t['phase'] == p)}/{len(rows)}"
                             for p in dict.fromkeys(t["phase"] for t in rows))
        errs = [t["errors"] for t in rows]
        reps = [t["repair_s"] for t in rows]
        eng = [t["engine_s"] for t in rows if t["engine_s"] is not None]
        lines.append(f"| {target} | {len(rows)} | {outcomes} | {statistics.median(errs):g} ({max(errs)}) | "
                     f"{sum(t['requests'] for t in rows)} | {_fmt(statistics.median(reps))} ({_fmt(max(reps))}) | "
                     + (f"{_fmt(statistics.median(eng))} ({_fmt(max(eng))})" if eng else "-") + " | "
                     + f"{sum(t.get('grpc_errors', 0) for t in rows)} / {sum(t.get('grpc_requests', 0) for t in rows)} |")
    lines += ["", "Per trial:", "",
              "| killed | exit | phase | failed / requests | repair s | engine s | gRPC failed / calls (codes) | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for t in serving:
        codes = ", ".join(t.get("grpc_codes", []))
        lines.append(f"| {t['target']} | {t['exit']} | {t['phase']} | {t['errors']} / {t['requests']} | "
                     f"{_fmt(t['repair_s'])} | {_fmt(t['engine_s'])} | "
                     f"{t.get('grpc_errors', 0)} / {t.get('grpc_requests', 0)}{f' ({codes})' if codes else ''} | "
                     f"{t['reason'].replace('|', '/')} |")
    lines += ["", "## kill -9 of `rollout start` at each step kind, then `rollout start` again", "",
              "Plan: setWeight 30, pause 3 s, analysis 3 s, gate (a local webhook answering 200), setWeight 60, "
              "setWeight 100, promote, scale-down. `rollback`: the same plan for a bad candidate (v3: half its "
              "requests fail, each 1.5 s late), killed while the rollback it recorded is carried out. "
              "`landed`: the moment the state showed when the kill was sent.", "",
              "The good plan's uninterrupted run (the `setWeight` baseline) is the baseline of every step kind but "
              "`rollback`, which has its own (the bad candidate run to its rollback).", "",
              "| step kind | run | landed | split after the first run | exit | phase | canary split re-applied | failed / requests |",
              "|---|---|---|---|---|---|---|---|"]
    for t in kills:
        lines.append(f"| {t['kind']} | {'killed + rerun' if t['killed'] else 'uninterrupted'} | {t['landed']} | "
                     f"{t['split_at_kill']} | {t['exit']} | {t['phase']} | {'yes' if t['canary_again'] else 'no'} | "
                     f"{t['errors']} / {t['requests']} |")
    same = [t for t in kills if t["killed"]]
    base = {t["kind"]: t for t in kills if not t["killed"]}
    good = base.get("setWeight")
    agree = sum(1 for t in same if (b := base.get(t["kind"], good)) and t["phase"] == b["phase"] and t["exit"] == b["exit"])
    low, high = wilson(agree, len(same))
    lines += ["", f"Killed runs ending like the uninterrupted one (phase and exit code): {agree}/{len(same)} "
                  f"(95% Wilson interval {100 * low:.0f}–{100 * high:.0f}%).", ""]
    early = [t for t in same if t["kind"] == "rollback" and "%" in str(t["split_at_kill"])]
    if early:
        lines += ["The killed `rollback` run's kill landed after the rollback was recorded and before traffic moved: "
                  "the bad candidate kept its share (and its failures) until the rerun continued the rollback.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--parts", default="serving,kills")
    ap.add_argument("--data-plane", default="auto", choices=["auto", "nginx", "python"],
                    help="the router's data plane (platform.data_plane)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.md")
    ap.add_argument("--replot", type=Path, help="rebuild the report from the JSON lines a run printed (its log)")
    args = ap.parse_args()
    DATA_PLANE[0] = args.data_plane
    if args.replot:
        rows = [json.loads(line) for line in args.replot.read_text().splitlines() if line.startswith("{")]
        text = report([r for r in rows if "target" in r], [r for r in rows if "kind" in r], args.trials)
        args.out.write_text(text)
        print(text)
        return
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        rig = make_rig(Path(tmp))
        serving: list[dict[str, Any]] = []
        kills: list[dict[str, Any]] = []
        if "serving" in args.parts:
            for i in range(args.trials):
                for target in TARGETS:
                    serving.append(serving_trial(rig, target))
                    print(json.dumps(serving[-1]), flush=True)
        if "kills" in args.parts:
            for kind in ("setWeight", "pause", "analysis", "gate", "promote", "rollback"):
                for kill in (False, True):
                    if not kill and kind not in ("setWeight", "rollback"):
                        continue  # one uninterrupted run per plan (good, bad) is the baseline
                    kills.append(kill_trial(rig, kind, kill))
                    print(json.dumps(kills[-1]), flush=True)
        text = report(serving, kills, args.trials)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
