"""`rollout demo`: the whole product in one minute on this machine.

It builds a git registry with three iris models (v1 and v2 good, v3 bad: it fails a
share of requests and is slower), serves v1 on the local platform, sends steady
traffic, then runs a canary of v2 (promoted) and a canary of v3 (rolled back),
printing every step and the measured values that decided it. Everything it started is
stopped before it returns, whatever happens.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rollout import app as wiring
from rollout.engine import exit_code_for
from rollout.view import describe_measurement, rollout_view
from rollout.demo.traffic import LoadGenerator
from rollout.errors import BadInput
from rollout.registry.git import publish_version
from rollout.spec import RolloutSpec, parse_spec
from rollout.state import Event, ModelState, Phase

BAD_ERROR_RATE = 0.25
BAD_EXTRA_LATENCY_MS = 40.0


def demo_spec(registry: Path | str, server: str, kind: str = "git") -> RolloutSpec:
    return parse_spec({
        "model": "iris",
        "registry": ({"type": "git", "url": str(registry)} if kind == "git" else
                     {"type": "mlflow", "tracking_uri": str(registry), "max_retries": 0}),
        "platform": {"type": "local", "server": server, "ready_timeout_s": 120},
        "strategy": {"type": "canary", "weights": [20, 50], "scale_down_delay_s": 5},
        "analysis": {
            # 15 s per step: enough requests for min_requests (50 per version) even on a busy
            # machine. p90, not p99: on ~100 requests a p99 is the slowest one or two, and a
            # busy machine's scheduling hiccups alone can double it.
            "interval_s": 3, "duration_s": 15, "inconclusive": "fail",
            "metrics": [
                {"name": "error-rate", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}},
                # p90, not p99 (see above). MLflow models answer through the pyfunc wrapper (schema
                # checks per request), so there a just-started candidate's latency against a warm
                # stable is noise on a busy machine: measured and shown, decided by the error rate.
                {"name": "latency-p90", "query": "latency_p90_ms", "dry_run": kind == "mlflow",
                 "judge": {"type": "compare", "max_relative_increase": 1.0, "max_absolute_increase": 50}},
            ],
        },
    }, source="demo spec")


def build_registry(root: Path, echo: Callable[[str], None]) -> Path:
    from rollout.demo.models import make_bad_model, make_good_model

    repo = root / "registry"
    for version, make in [
        ("v1", lambda d: make_good_model(d, seed=1)),
        ("v2", lambda d: make_good_model(d, seed=2)),
        ("v3", lambda d: make_bad_model(d, error_rate=BAD_ERROR_RATE, extra_latency_ms=BAD_EXTRA_LATENCY_MS)),
    ]:
        src = root / "build" / version
        src.mkdir(parents=True)
        make(src)
        publish_version(repo, "iris", version, src, metadata={"demo": True})
    echo(f"registry  {repo} (git): iris v1, v2 good; v3 fails {BAD_ERROR_RATE:.0%} of requests, "
         f"+{BAD_EXTRA_LATENCY_MS:.0f} ms")
    return repo


def _deciding(ms: ModelState) -> list[str]:
    """The measurements behind the outcome, as the engine recorded them (rollout/view.py)."""
    r = ms.rollout
    if r is None:
        return []
    return [describe_measurement(m) for m in rollout_view(r).decided_by]


def run_demo(home: Path | None = None, server: str = "mlserver", echo: Callable[[str], None] = print,
             rate_per_s: float = 40.0, registry: str = "git") -> int:
    if registry not in ("git", "mlflow"):
        raise BadInput(f"--registry {registry!r} is not one of git, mlflow")
    if registry == "mlflow" and server != "mlserver":
        raise BadInput("--registry mlflow serves MLflow models with MLServer's MLflow runtime: use --server mlserver")
    # With --home, the demo's registry stays beside its state, so `rollout history iris`
    # and `rollout rollback iris` work afterwards; without, everything is temporary.
    keep = home is not None
    if keep:
        root = Path(home) / "demo"
        shutil.rmtree(root, ignore_errors=True)  # the previous demo's registry: only ours lives here
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="rollout-demo-"))
        echo(f"workdir   {root} (temporary: removed when the demo ends; --home DIR keeps the state and registry)")
    try:
        with contextlib.ExitStack() as stack:
            if registry == "mlflow":
                from rollout.demo.mlflow_server import mlflow_server, register_demo_versions

                url = stack.enter_context(mlflow_server(root / "mlflow"))
                register_demo_versions(url, BAD_ERROR_RATE, BAD_EXTRA_LATENCY_MS, echo)
                return _run(root, home, demo_spec(url, server, "mlflow"), server, echo, rate_per_s, ["1", "2", "3"])
            return _run(root, home, None, server, echo, rate_per_s, ["v1", "v2", "v3"])
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, home: Path | None, spec: RolloutSpec | None, server: str, echo: Callable[[str], None],
         rate_per_s: float, versions: list[str]) -> int:
    home_dir = Path(home) if home else root / "home"
    platform = None
    load: LoadGenerator | None = None
    outcomes: list[tuple[str, Phase, Phase, list[str]]] = []

    def show(event: Event, ms: ModelState) -> None:
        if event.kind in ("step_done", "measurement", "promoted", "rolled_back", "failed", "paused", "started"):
            echo(f"  {event.kind:<12} {event.message}")

    try:
        if spec is None:
            spec = demo_spec(build_registry(root, echo), server)
        reg = wiring.make_registry(spec, home_dir)
        platform = wiring.make_platform(spec, home_dir)
        echo(f"platform  local ({server} model servers, built-in router), state in {home_dir}")

        def engine(command: str):
            return wiring.build_engine(spec, home_dir, command, [show], platform=platform,
                                       echo=lambda line: echo(f"  {'recorded':<12} {line}"))

        first, good, bad = versions
        echo(f"\n== deploy iris:{first} as the first stable version")
        engine("start").start(reg.resolve(f"iris:{first}"))
        url = f"{platform.endpoint()}/v2/models/iris/infer"
        load = LoadGenerator(url, rate_per_s=rate_per_s, workers=4).start()
        echo(f"traffic   {rate_per_s:.0f} req/s to {url}")

        for version, expected in [(good, Phase.PROMOTED), (bad, Phase.ROLLED_BACK)]:
            echo(f"\n== canary of iris:{version} (expected: {expected.value})")
            ms = engine("start").start(reg.resolve(f"iris:{version}"))
            assert ms.rollout is not None
            outcomes.append((version, expected, ms.rollout.phase, _deciding(ms)))

        samples = load.stop()
        load = None
        echo("\n== summary")
        ok = True
        for version, expected, got, deciding in outcomes:
            mark = "ok " if got is expected else "BAD"
            ok &= got is expected
            echo(f"{mark} iris:{version}: {got.value} (expected {expected.value}, exit {exit_code_for(got)})")
            for line in deciding:
                echo(f"      {line}")
        served: dict[str, int] = {}
        for s in samples:
            if s.version:
                served[s.version] = served.get(s.version, 0) + 1
        errors: dict[str, int] = {}
        for s in samples:
            if s.status != 200:
                errors[s.version or "unknown"] = errors.get(s.version or "unknown", 0) + 1
        echo(f"traffic   {len(samples)} requests; answered by "
             + ", ".join(f"{v}: {n}" for v, n in sorted(served.items()))
             + "; errors by version: " + (", ".join(f"{v}: {n}" for v, n in sorted(errors.items())) or "none"))
        return 0 if ok else 1
    finally:
        if load is not None:
            load.stop()
        if platform is not None:
            platform.down()
