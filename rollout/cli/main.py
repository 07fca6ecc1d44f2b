"""The `rollout` command line. Thin: parse, call the engine, print, exit with a code.

Exit codes: 0 promoted / done, 1 unexpected error, 2 bad input, 3 rolled back,
4 paused, 5 locked by another run (or another version in progress), 6 `status --watch`: the
rollout is in progress but the process moving it died and nothing else moves it."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from rollout import app as wiring
from rollout import names, redact
from rollout.cli import report
from rollout.cli.progress import plain_line
from rollout.cli.session import Session
from rollout.controller.local import leader as controller_leader
from rollout.errors import BadInput, RolloutError, printable
from rollout.integrations.github import active as github_active
from rollout.registry.base import parse_ref, validate_model_name
from rollout.spec import RolloutSpec, load_spec
from rollout.state import Event, ModelState

cli = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Progressive delivery for machine-learning models.")
local_cli = typer.Typer(no_args_is_help=True, help="The local platform's processes.")
cli.add_typer(local_cli, name="local")
registry_cli = typer.Typer(no_args_is_help=True, help="The model registry of a spec.")
cli.add_typer(registry_cli, name="registry")

SpecOpt = typer.Option(None, "-f", "--file", help="Rollout spec (YAML)")
HomeOpt = typer.Option(None, "--home", help="State directory (default $ROLLOUT_HOME or ./.rollout)")
OutputOpt = typer.Option("text", "-o", "--output", help="text, json or yaml")


@cli.callback()
def _global_options(
    context: Optional[str] = typer.Option(None, "--context", help="Kubernetes: kubeconfig context (wins over the spec)"),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Kubernetes: namespace (wins over the spec)"),
) -> None:
    """Progressive delivery for machine-learning models."""
    # Passed as values into every spec this command loads (never through os.environ).
    if namespace:
        try:
            names.k8s_namespace(namespace)
        except BadInput as exc:
            _fail(f"--namespace: {exc}", exc.exit_code)
    _cluster.update(context=context, namespace=namespace)


_cluster: dict[str, str | None] = {"context": None, "namespace": None}


def _load_spec(path: Path) -> RolloutSpec:
    return wiring.with_cluster(load_spec(path), **_cluster)


def _echo(text: str = "", err: bool = False) -> None:
    """Every line the CLI prints: secrets masked (rollout/redact.py)."""
    typer.echo(redact.scrub(text), err=err)


def _fail(message: str, code: int) -> None:
    """One line (or a few, for a log tail) naming the problem: secrets masked, control
    characters escaped, length bounded."""
    _echo(f"error: {printable(redact.scrub(message))}", err=True)
    raise typer.Exit(code)


def _guard(fn: Callable[[], int]) -> None:
    """Turn the project's errors into one line and an exit code; bugs keep their traceback."""
    global _session
    _session = None
    try:
        code = fn()
    except RolloutError as exc:
        _finish(exc.exit_code, str(exc))
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _finish(130, "interrupted: state is saved; rerun the same command to resume")
        _echo("interrupted: state is saved; rerun the same command to resume", err=True)
        raise typer.Exit(130)
    _finish(code)
    raise typer.Exit(code)


def print_event(event: Event, ms: ModelState) -> None:
    _echo(plain_line(event, ms))


# ---- issue #5: progress display, GitHub Actions summary/outputs/annotations, notifications
# and post-rollout hooks run beside the engine as listeners (rollout/session.py); _guard
# finishes them with the command's exit code.
_session: Session | None = None


def _listeners(spec: RolloutSpec | None = None) -> list[Any]:
    global _session
    _session = Session(spec, _echo)
    return _session.listeners


def _observe(ms: ModelState) -> None:
    """A state read by a command that does not run the engine (status): outputs only."""
    global _session
    if _session is None:
        _session = Session(None, _echo, live=False, report=False)
    _session.observe(ms)


def _finish(code: int, error: str | None = None) -> None:
    session = _session or (Session(None, _echo, live=False) if github_active() else None)
    if session is not None:
        session.finish(code, error)
# ---- end of issue #5 wiring


def _spec_for(model: str, spec_path: Optional[Path], home: Path) -> RolloutSpec:
    if spec_path is not None:
        spec = _load_spec(spec_path)
        if spec.model != model:
            raise BadInput(f"the spec {spec_path} is for model {spec.model!r}, not {model!r}")
        return spec
    return wiring.with_cluster(wiring.spec_from_state(model, wiring.make_store(None, home)), **_cluster)


def _spec_for_repair(model: str, spec_path: Optional[Path], home: Path) -> RolloutSpec:
    """abort / rollback: like ``_spec_for``, but they must work with no usable state."""
    if spec_path is not None:
        return _spec_for(model, spec_path, home)
    return wiring.with_cluster(wiring.spec_for_repair(model, wiring.make_store(None, home), home), **_cluster)


def _check_writable(spec: RolloutSpec, home: Path) -> None:
    """A read-only or full home fails now, naming the path, before any traffic moves."""
    check = getattr(wiring.make_store(spec, home), "check_writable", None)
    if check is not None:
        check()


@cli.command()
def start(ref: str = typer.Argument(..., help="model:version, model:latest or model@alias"),
          spec_path: Optional[Path] = SpecOpt, supersede: bool = typer.Option(False, help="Abort a rollout of another version first"),
          detach: bool = typer.Option(False, "--detach", help="Record the rollout, reconcile once and return; "
                                      "`rollout controller` carries it on. Exit 0 while it is in progress "
                                      "(the phase is printed and is the `phase` output), 3 if already rolled back"),
          home: Optional[Path] = HomeOpt) -> None:
    """Roll a version out: runs the plan until promoted (0), rolled back (3) or paused (4)."""
    def run() -> int:
        h = wiring.home_dir(home)
        parsed = parse_ref(ref, require_version=True)
        spec = _spec_for(parsed.name, spec_path, h)
        wiring.lint(spec)
        _check_writable(spec, h)
        wiring.preflight(spec)
        registry = wiring.make_registry(spec, h)
        version = registry.resolve(parsed)
        wiring.check_deployable(spec, registry, version)
        engine = wiring.build_engine(spec, h, "start", _listeners(spec))
        ms = engine.start(version, supersede=supersede, detach=detach)
        if detach and not engine.noop and ms.rollout is not None:
            r = ms.rollout
            _echo(f"{parsed.name}:{r.candidate.version} {r.phase.value}"
                       + (f" at step {min(r.step_index + 1, len(r.plan))}/{len(r.plan)}" if r.phase.active else "")
                       + (f"; {_who_carries(spec, h)}" if r.phase.active else ""))
        return engine.exit_code(ms)
    _guard(run)


def _who_carries(spec: Any, home: Path) -> str:
    """Who moves a detached rollout on: on the local platform, whether a controller leads
    for this home (none: the rollout waits until one starts, or a `rollout start` runs)."""
    if getattr(spec.platform, "type", None) != "local":
        return "`rollout controller` carries it on"
    from rollout.platforms.local.daemon import leader

    if leader(home):
        return "the controller for this home carries it on"
    return ("no controller runs for this home: `rollout controller --daemon` carries it on, "
            "or `rollout start` of the same version without --detach")


@cli.command()
def promote(ref: str = typer.Argument(..., help="model:version being rolled out (or just model)"),
            full: bool = typer.Option(False, "--full", help="Skip the remaining steps and promote now"),
            spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Pass the current pause, gate or inconclusive analysis (or, with --full, everything)."""
    def run() -> int:
        h = wiring.home_dir(home)
        parsed = parse_ref(ref)
        spec = _spec_for(parsed.name, spec_path, h)
        engine = wiring.build_engine(spec, h, "promote", _listeners(spec))
        ms = engine.promote(parsed.version, full=full)
        if engine.handed_over:
            _echo(f"the running rollout of {parsed.name} accepted the promotion; now "
                       f"{ms.rollout.phase.value if ms.rollout else '-'} (follow it: `rollout status {parsed.name} --watch`)")
        return engine.exit_code(ms)
    _guard(run)


@cli.command()
def abort(model: str, spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Send all traffic back to stable; the candidate keeps running for inspection."""
    def run() -> int:
        h = wiring.home_dir(home)
        validate_model_name(model)
        spec = _spec_for_repair(model, spec_path, h)
        wiring.build_engine(spec, h, "abort", _listeners(spec)).abort()
        return 0
    _guard(run)


@cli.command()
def rollback(model: str, to: Optional[str] = typer.Option(None, "--to", help="An earlier stable version to restore (default: the previous one)"),
             spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Restore the previous stable version now, without analysis."""
    def run() -> int:
        h = wiring.home_dir(home)
        validate_model_name(model)
        spec = _spec_for_repair(model, spec_path, h)
        wiring.build_engine(spec, h, "rollback", _listeners(spec)).rollback(to)
        return 0
    _guard(run)


@cli.command()
def status(model: str, output: str = OutputOpt,
           watch: bool = typer.Option(False, "--watch", "-w", help="Follow until the rollout ends: exit 0 promoted, "
                                      "3 rolled back, 6 when the process moving it died and nothing else moves it"),
           spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Phase, step, traffic and the latest measured values."""
    def run() -> int:
        if output not in ("text", "json", "yaml"):
            raise BadInput(f"--output {output!r} is not one of text, json, yaml")
        h = wiring.home_dir(home)
        validate_model_name(model)
        store = wiring.make_store(_load_spec(spec_path) if spec_path else None, h)
        if watch:
            from rollout.cli.watch import watch_status

            code = watch_status(store, model, echo=_echo, controller=lambda: controller_leader(h))
            _observe(store.load(model))
            return code
        ms = store.load(model)
        if ms.revision == 0:
            raise BadInput(f"model {model!r} has no state in {h}; known: {', '.join(store.models()) or 'none'}")
        _observe(ms)
        found = wiring.last_holder(store, model) if ms.rollout and ms.rollout.phase.active else None
        holder = found.words if found is not None and found.alive else None
        controller = None if holder else controller_leader(h)
        if output == "text":
            _echo(report.status_text(ms, holder, controller, show_holder=True, gone=found))
        else:
            by = holder or (f"controller ({controller})" if controller else None)
            _echo(report.render(report.status_dict(ms, by, gone=found), output))
        return 0
    _guard(run)


@cli.command()
def history(model: str, output: str = OutputOpt, spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Past rollouts with their outcome and the reasons."""
    def run() -> int:
        if output not in ("text", "json", "yaml"):
            raise BadInput(f"--output {output!r} is not one of text, json, yaml")
        h = wiring.home_dir(home)
        validate_model_name(model)
        ms = wiring.make_store(_load_spec(spec_path) if spec_path else None, h).load(model)
        _echo(report.history_text(ms) if output == "text" else report.render(report.history_rows(ms), output))
        return 0
    _guard(run)


@cli.command("lint")
def lint_cmd(spec_path: Path = typer.Option(..., "-f", "--file", help="Rollout spec (YAML)"),
             cluster: bool = typer.Option(False, "--cluster", help="Kubernetes: also check permissions and CRDs")) -> None:
    """Validate a spec and print the plan it makes; exit 2 naming the bad field."""
    def run() -> int:
        spec = _load_spec(spec_path)
        steps = wiring.lint(spec)
        for note in wiring.preflight(spec) if cluster else []:
            _echo(f"note: {note}", err=True)
        _echo(f"{spec_path}: ok ({spec.strategy.type} of {spec.model} on {spec.platform.type})")
        for i, s in enumerate(steps, 1):
            _echo(f"  {i}. {s}")
        for warning in wiring.lint_warnings(spec):
            _echo(f"warning: {warning}", err=True)
        return 0
    _guard(run)


@cli.command()
def render(spec_path: Optional[Path] = typer.Option(None, "-f", "--file", help="Rollout spec (YAML)"),
           ref: Optional[str] = typer.Option(None, "--version", help="Candidate model:version to render for"),
           controller: bool = typer.Option(False, "--controller", help="Instead: the objects that run `rollout "
                                           "controller` in a namespace (ServiceAccount, Role, RoleBinding, Lease, "
                                           "Deployment)"),
           namespace: Optional[str] = typer.Option(None, "-n", "--namespace", help="--controller: its namespace "
                                                   "(default `rollout --namespace`, else models)"),
           image: Optional[str] = typer.Option(None, "--image", help="--controller: the image with rollout "
                                               "installed (default rollout:<version>)")) -> None:
    """Print the Kubernetes manifests the spec would apply (or, with --controller, the controller's)."""
    def run() -> int:
        if controller:
            if spec_path is not None or ref is not None:
                raise BadInput("rollout render --controller takes no -f/--version: the controller serves every "
                               "model of its namespace")
            from rollout.platforms.kubernetes import controller_manifests as cm

            ns = namespace or _cluster["namespace"] or cm.DEFAULT_NAMESPACE
            try:
                names.k8s_namespace(ns)
            except BadInput as exc:
                raise BadInput(f"-n/--namespace: {exc}") from None
            _echo(cm.render(ns, image or cm.DEFAULT_IMAGE).rstrip("\n"))
            return 0
        if namespace is not None or image is not None:
            raise BadInput("-n/--namespace and --image are options of rollout render --controller "
                           "(a spec's namespace is platform.namespace, or `rollout --namespace`)")
        if spec_path is None:
            raise BadInput("rollout render needs -f spec.yaml (a model's manifests) or --controller")
        spec = _load_spec(spec_path)
        if spec.platform.type != "kubernetes":
            raise BadInput(f"{spec_path}: platform.type is {spec.platform.type!r}; only kubernetes has manifests to render")
        from rollout.platforms.kubernetes.render import render_spec  # type: ignore[import-not-found]

        wiring.lint(spec)  # what lint refuses is not rendered (e.g. router service with a shadow)
        _echo(render_spec(spec, ref, registry=wiring.make_registry(spec, wiring.home_dir(None))))
        return 0
    _guard(run)


@cli.command()
def controller(home: Optional[Path] = HomeOpt,
               port: int = typer.Option(9464, "--port", help="Port of /metrics and /healthz on 127.0.0.1 (0: any free port)"),
               once: bool = typer.Option(False, "--once", help="Local: reconcile every model once and exit"),
               platform: str = typer.Option("local", "--platform", help="local (a state home) or kubernetes (a namespace)"),
               kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", help="Kubernetes: kubeconfig file"),
               lease_duration_s: float = typer.Option(15.0, "--lease-duration", help="Kubernetes: leader Lease duration, s"),
               daemon: bool = typer.Option(False, "--daemon", help="Local: run in the background (until `rollout local down`)"),
               address: str = typer.Option("127.0.0.1", "--address", help="Address of /metrics and /healthz "
                                           "(0.0.0.0 in a pod, so the kubelet's probes reach it)")) -> None:
    """Reconcile every model of a state home (local) or a namespace (kubernetes) until
    stopped: carries detached rollouts, retirements and hooks on time. One controller
    leads (a lock file locally, a Lease on Kubernetes); the others stand by."""
    def run() -> int:
        if platform == "kubernetes":
            from rollout.controller.kubernetes import run_kubernetes_controller

            return run_kubernetes_controller(_cluster["namespace"] or "default", kubeconfig=kubeconfig,
                                             context=_cluster["context"], port=port,
                                             lease_duration_s=lease_duration_s, address=address, echo=_echo)
        if platform != "local":
            raise BadInput(f"--platform {platform!r} is not one of local, kubernetes")
        from rollout.controller import leader, run_local_controller, start_daemon

        if daemon:
            pid = start_daemon(wiring.home_dir(home))
            _echo(f"controller running in the background, pid {pid}" if pid else
                       f"a controller already leads for {wiring.home_dir(home)}: {leader(wiring.home_dir(home))}")
            return 0

        return run_local_controller(wiring.home_dir(home), port=port, once=once, echo=_echo, address=address)
    _guard(run)


@cli.command()
def demo(home: Optional[Path] = HomeOpt,
         server: str = typer.Option("mlserver", help="Model server for the demo: mlserver or builtin"),
         registry: str = typer.Option("git", "--registry", help="Where the demo's versions live: git or mlflow "
                                      "(a local mlflow server; needs the mlflow extra: pip install 'rollout\\[mlflow]')")) -> None:
    """A full canary on the local platform: a good version promoted, a bad one rolled back."""
    def run() -> int:
        from rollout.demo.run import run_demo

        return run_demo(home=home, server=server, echo=_echo, registry=registry)
    _guard(run)


@registry_cli.command("list")
def registry_list(model: Optional[str] = typer.Argument(None, help="A model (default: list the models)"),
                  output: str = OutputOpt, spec_path: Optional[Path] = SpecOpt, home: Optional[Path] = HomeOpt) -> None:
    """Versions with their aliases, evaluation metrics, and which is stable where."""
    def run() -> int:
        from rollout.registry import listing

        if output not in ("text", "json", "yaml"):
            raise BadInput(f"--output {output!r} is not one of text, json, yaml")
        h = wiring.home_dir(home)
        if model is None:
            if spec_path is None:
                raise BadInput("rollout registry list without a model needs -f spec.yaml (which registry to read)")
            models = wiring.make_registry(load_spec(spec_path), h).models()
            _echo(report.render({"models": models}, output) if output != "text" else "\n".join(models))
            return 0
        validate_model_name(model)
        spec = _spec_for(model, spec_path, h)
        rows = listing.describe(wiring.make_registry(spec, h), model)
        stable = wiring.make_store(spec, h).load(model).stable
        _echo(listing.render(model, rows, {spec.platform.type: stable.version} if stable else {}, output))
        return 0
    _guard(run)


@local_cli.command("status")
def local_status(home: Optional[Path] = HomeOpt) -> None:
    """The local routers and model-server processes this machine runs."""
    def run() -> int:
        from rollout.platforms.local.daemon import leader
        from rollout.platforms.local.platform import list_local

        h = wiring.home_dir(home)
        lead = leader(h)
        _echo(f"controller {lead}" if lead else f"controller none for {h} (platform.controller: true starts one; "
              "or `rollout controller --daemon`)")
        rows = list_local(h)
        in_progress = {r.model: r for r in wiring.rollouts_in_progress(h)}
        where = f" --home {h}" if home is not None else ""
        if not rows and not in_progress:
            _echo("no local model processes")
        for row in rows:
            _echo(report.local_text(row, f"rollout start {wiring.serving_ref(h, row.model, row.last_stable)}{where}",
                                    wiring.pending_retirements(h, row.model), controller=lead is not None,
                                    now=time.time(), where=where))
        for model, r in sorted(in_progress.items()):
            if model not in {row.model for row in rows}:
                _echo(f"{model}\n  no processes, but its rollout of {r.candidate.version} is {r.phase.value.lower()}; "
                      f"`rollout start {model}:{r.candidate.version}{where}` brings it back")
        return 0
    _guard(run)


@local_cli.command("down")
def local_down(model: Optional[str] = typer.Argument(None, help="Only this model"), home: Optional[Path] = HomeOpt) -> None:
    """Stop the local router and model servers (of one model, or all)."""
    def run() -> int:
        from rollout.platforms.local.platform import LocalPlatform

        h = wiring.home_dir(home)
        # Every model directory, not just those with readable records: down must work on damage.
        models = [model] if model else sorted(p.name for p in (h / "local").glob("*") if p.is_dir())
        if model is None:
            from rollout.controller import stop_daemon

            pid = stop_daemon(h)  # first, so it does not restart what is being stopped
            if pid:
                _echo(f"stopped the controller (pid {pid})")
        for m in models:
            validate_model_name(m)
            if not (h / "local" / m).is_dir():
                _echo(f"no local processes of {m} under {h}")
                continue
            LocalPlatform(m, h).down()
            _echo(f"stopped {m}")
        return 0
    _guard(run)


def _scrubbed_excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A bug's traceback is kept, but passes the redactor like every other output."""
    sys.stderr.write(redact.scrub("".join(traceback.format_exception(kind, exc, tb))))


def main() -> None:
    redact.install_logging()
    sys.excepthook = _scrubbed_excepthook
    cli(prog_name="rollout")  # also under `python -m rollout`, so --show-completion names `rollout`


if __name__ == "__main__":
    main()
