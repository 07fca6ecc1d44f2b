"""The composition root: builds registry, platform, providers, store and engine from a
spec, so the CLI (and the GitHub action, and tests) stay thin and wire things one way.
Unknown names are errors that list the known ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.analysis.base import MetricProvider
from rollout.analysis.router import RouterProvider
from rollout.engine import Engine, Listener, Services
from rollout.analysis import judges
from rollout.errors import BadInput, NotFound, SpecError, StateDamaged, Unsupported
from rollout.platforms.base import Capabilities, Platform
from rollout.registry.base import ModelVersion, Registry
from rollout.spec import KubernetesPlatformSpec, LocalPlatformSpec, RolloutSpec, parse_spec
from rollout.state import FileStateStore, LockHolder, ModelState, RolloutState, StateStore, home_dir  # noqa: F401 (home_dir: API)


@dataclass(frozen=True)
class Plugin:
    """One entry of a plug-in table: how to build it, and how it checks its own section
    of a spec at `rollout lint` time (raising the project's errors naming the field)."""

    factory: Callable[..., Any]
    validate: Callable[[RolloutSpec], None] = lambda spec: None


def _git_registry(spec: RolloutSpec, home: Path) -> Registry:
    from rollout.registry.git import GitRegistry

    return GitRegistry.from_spec(spec.registry, home / "registry")


def _mlflow_registry(spec: RolloutSpec, home: Path) -> Registry:
    from rollout.registry.mlflow import MlflowRegistry

    return MlflowRegistry.from_spec(spec.registry, home / "registry")


def _validate_mlflow_registry(spec: RolloutSpec) -> None:
    if isinstance(spec.platform, LocalPlatformSpec) and spec.platform.server == "builtin":
        raise Unsupported("registry.type mlflow gives MLflow models, which the builtin server cannot load; use "
                          "platform.server: mlserver (MLServer's MLflow runtime, rollout[mlflow])")


def _local_platform(spec: RolloutSpec, home: Path) -> Platform:
    from rollout.platforms.local.platform import LocalPlatform

    p = spec.platform
    registry: list[Registry] = []  # built when first needed: most deploys find the files already local

    def materialise(version: ModelVersion) -> Path:
        if not registry:
            registry.append(make_registry(spec, home))
        return registry[0].materialise(version)

    return LocalPlatform(spec.model, home, server=p.server, ready_timeout_s=p.ready_timeout_s,
                         router_port=p.router_port, router_grpc_port=p.router_grpc_port,
                         backend_timeout_s=p.backend_timeout_s, shadow_timeout_s=p.shadow_timeout_s,
                         body_limit_bytes=p.body_limit_bytes, materialise=materialise, controller=p.controller,
                         data_plane=p.data_plane)


def _kubernetes_platform(spec: RolloutSpec, home: Path) -> Platform:
    try:
        from rollout.platforms.kubernetes.platform import KubernetesPlatform
    except ImportError as exc:  # pragma: no cover - a build without the kubernetes extra
        raise Unsupported(f"platform.type 'kubernetes' is not available in this build: {exc}") from None
    registry: list[Registry] = []  # built when first needed, like the local platform's

    def storage_uri(version: ModelVersion) -> str:
        if not registry:
            registry.append(make_registry(spec, home))
        return registry[0].storage_uri(version)

    return KubernetesPlatform.from_spec(spec, storage_uri=storage_uri)


def _router_provider(spec: RolloutSpec, platform: Platform) -> MetricProvider:
    return RouterProvider(platform.endpoint)


def _prometheus_provider(spec: RolloutSpec, platform: Platform) -> MetricProvider | None:
    if spec.analysis.prometheus is None:
        return None
    try:
        from rollout.analysis.prometheus import PrometheusProvider
    except ImportError as exc:  # pragma: no cover
        raise Unsupported(f"the prometheus provider is not available in this build: {exc}") from None
    return PrometheusProvider.from_spec(spec.analysis.prometheus)


def _validate_router_metrics(spec: RolloutSpec) -> None:
    from rollout.analysis.router import QUERIES

    for m in spec.analysis.metrics:
        if m.provider != "router":
            continue
        if not isinstance(spec.platform, LocalPlatformSpec):
            raise Unsupported(f"analysis.metrics.{m.name}: provider 'router' reads the local router and works only "
                              "with platform.type local; use prometheus")
        if m.query not in QUERIES:
            raise SpecError(f"analysis.metrics.{m.name}.query: unknown router query {m.query!r}; "
                            f"known: {', '.join(QUERIES)}")


def _validate_prometheus_metrics(spec: RolloutSpec) -> None:
    from rollout.analysis import packs, promql

    for m in spec.analysis.metrics:
        if m.provider != "prometheus":
            continue
        if packs.is_pack_ref(m.query):
            try:
                pack = packs.resolve(m.query).pack
            except SpecError as exc:  # names the known packs and queries
                raise SpecError(f"analysis.metrics.{m.name}.{exc}") from None
            if pack == "knative" and isinstance(spec.platform, KubernetesPlatformSpec):
                raise Unsupported(f"analysis.metrics.{m.name}.query: pack knative reads Knative revisions, which "
                                  "rollout does not deploy (it runs Deployments); use pack:istio, "
                                  "pack:gateway-api or pack:mlserver")
        elif promql.unknown_placeholders(m.query):
            raise SpecError(f"analysis.metrics.{m.name}.query: unknown placeholder(s) "
                            f"{', '.join(promql.unknown_placeholders(m.query))}; known: "
                            + ", ".join("{{%s}}" % p for p in promql.PLACEHOLDERS))


def _validate_capabilities(spec: RolloutSpec) -> None:
    """A router that cannot mirror (or has no preview) says so now, not halfway through."""
    from rollout.strategies import plan as make_plan

    steps = make_plan(spec)
    caps = platform_capabilities(spec)
    if any(getattr(s, "mirror", 0) for s in steps) and not caps.mirror:
        raise Unsupported(f"strategy {spec.strategy.type!r} mirrors traffic, but the {spec.platform.type} platform"
                          + (f" with router {spec.platform.router!r}" if isinstance(spec.platform, KubernetesPlatformSpec) else "")
                          + " cannot mirror; use a router that can (gateway-api, istio)")
    if any(getattr(s, "preview", False) for s in steps) and not caps.preview:
        raise Unsupported("strategy 'blue_green' with preview_analysis needs a preview endpoint, "
                          f"which the {spec.platform.type} platform does not offer; set preview_analysis: false")


# The plug-in tables: spec ``type`` -> Plugin. Adding a registry, platform or metric
# provider is one module, its spec class, one line here and one test.
REGISTRIES: dict[str, Plugin] = {
    "git": Plugin(_git_registry),
    "mlflow": Plugin(_mlflow_registry, _validate_mlflow_registry),
}
PLATFORMS: dict[str, Plugin] = {
    "local": Plugin(_local_platform, _validate_capabilities),
    "kubernetes": Plugin(_kubernetes_platform, _validate_capabilities),
}
PROVIDERS: dict[str, Plugin] = {
    "router": Plugin(_router_provider, _validate_router_metrics),
    "prometheus": Plugin(_prometheus_provider, _validate_prometheus_metrics),
}
JUDGES = judges.JUDGES  # judge type -> factory (rollout/analysis/judges.py owns the table)


def _entry(table: dict[str, Plugin], kind: str, name: str) -> Plugin:
    try:
        return table[name]
    except KeyError:
        raise SpecError(f"{kind} {name!r} is not supported; known: {', '.join(sorted(table))}") from None


def make_registry(spec: RolloutSpec, home: Path) -> Registry:
    return _entry(REGISTRIES, "registry.type", spec.registry.type).factory(spec, home)


def check_deployable(spec: RolloutSpec, registry: Registry, version: ModelVersion) -> None:
    """Before a rollout begins: on Kubernetes the registry must name a URI the cluster's
    storage initializer can read (NotClusterReadable, exit 2, otherwise), so a version a
    cluster cannot fetch is refused with nothing recorded or applied."""
    if isinstance(spec.platform, KubernetesPlatformSpec):
        registry.storage_uri(version)


def make_platform(spec: RolloutSpec, home: Path) -> Platform:
    return _entry(PLATFORMS, "platform.type", spec.platform.type).factory(spec, home)


def platform_capabilities(spec: RolloutSpec) -> Capabilities:
    """What the configured platform and router can do, known without contacting it."""
    p = spec.platform
    if isinstance(p, KubernetesPlatformSpec):
        try:
            from rollout.platforms.kubernetes.platform import capabilities_for
        except ImportError:  # pragma: no cover
            return Capabilities(mirror=False, preview=False, exact_weights=False)
        return capabilities_for(p)
    return Capabilities(mirror=True, preview=True, exact_weights=True)


def make_providers(spec: RolloutSpec, platform: Platform) -> dict[str, MetricProvider]:
    providers: dict[str, MetricProvider] = {}
    for name, plugin in PROVIDERS.items():
        provider = plugin.factory(spec, platform)
        if provider is not None:
            providers[name] = provider
    return providers


def make_store(spec: RolloutSpec | None, home: Path) -> StateStore:
    """A Kubernetes spec's state lives in its namespace's ConfigMaps, with no fallback to
    local files: a rollout whose state went elsewhere would be invisible to the others."""
    if spec is not None and isinstance(spec.platform, KubernetesPlatformSpec):
        from rollout.platforms.kubernetes.state import ConfigMapStateStore

        return ConfigMapStateStore.from_spec(spec)
    return FileStateStore(home)


def serving_ref(home: Path, model: str, fallback_stable: str | None) -> str:
    """The reference whose `rollout start` brings a model's local processes back: the
    rollout in progress (a start of it resumes it, and restarts what it needs), else the
    stable the state records, else ``fallback_stable`` (what the router last served)."""
    ms = _local_state(home, model)
    if ms is not None and ms.rollout is not None and ms.rollout.phase.active:
        return f"{model}:{ms.rollout.candidate.version}"
    stable = ms.stable.version if ms is not None and ms.stable is not None else fallback_stable
    return f"{model}:{stable or '<stable>'}"


def rollouts_in_progress(home: Path) -> list[RolloutState]:
    """The local rollouts the state home says are in progress."""
    found = []
    for model in FileStateStore(home).models():
        ms = _local_state(home, model)
        if ms is not None and ms.rollout is not None and ms.rollout.phase.active:
            found.append(ms.rollout)
    return found


def pending_retirements(home: Path, model: str) -> dict[str, float]:
    """version -> when its scale-down delay ends (epoch seconds), as the state records it."""
    ms = _local_state(home, model)
    return {x.version: x.due_at for x in ms.retirements} if ms is not None else {}


def _local_state(home: Path, model: str) -> ModelState | None:
    try:
        return FileStateStore(home).load(model)
    except (StateDamaged, BadInput):  # damaged, or a file whose name is no model's
        return None


def with_cluster(spec: RolloutSpec, context: str | None = None, namespace: str | None = None) -> RolloutSpec:
    """The spec with `rollout --context/--namespace` applied (they win over the spec's values)."""
    if not isinstance(spec.platform, KubernetesPlatformSpec) or not (context or namespace):
        return spec
    update = {k: v for k, v in (("context", context), ("namespace", namespace)) if v}
    return spec.model_copy(update={"platform": spec.platform.model_copy(update=update)})


def lock_holder(store: StateStore, model: str) -> str | None:
    """Who holds the model's lock now (None: nobody), asked without taking it."""
    found = store.holder(model)
    return found.words if found is not None and found.alive else None


def last_holder(store: StateStore, model: str) -> LockHolder | None:
    """The holder's record, alive or not (a dead one: the process that ran the rollout is gone)."""
    return store.holder(model)


def lint_warnings(spec: RolloutSpec) -> list[str]:
    """Valid, but probably not what was meant: said by `rollout lint`, never fatal."""
    from rollout.strategies import plan as make_plan
    from rollout.steps import AnalysisStep, GateStep, PauseStep, TrafficStep

    warnings = []
    steps = make_plan(spec)
    full = next((i for i, s in enumerate(steps) if isinstance(s, TrafficStep) and s.weight == 100), len(steps))
    if not any(isinstance(s, (AnalysisStep, PauseStep, GateStep)) for s in steps[:full]):
        warnings.append("the plan reaches 100% without any analysis, pause or gate: nothing is measured before "
                        "promotion (add analysis.metrics, or a pause)")
    return warnings


def lint(spec: RolloutSpec) -> list[str]:
    """Everything that would stop this spec halfway through a rollout, found now: each
    plug-in checks its own section. Returns the plan, described step by step; raises on
    the first problem."""
    from rollout.strategies import plan as make_plan

    steps = make_plan(spec)
    _entry(REGISTRIES, "registry.type", spec.registry.type).validate(spec)
    _entry(PLATFORMS, "platform.type", spec.platform.type).validate(spec)
    for m in spec.analysis.metrics:
        if m.provider not in PROVIDERS:
            raise SpecError(f"analysis.metrics.{m.name}.provider: unknown provider {m.provider!r}; "
                            f"known: {', '.join(sorted(PROVIDERS))}")
    for name in dict.fromkeys(m.provider for m in spec.analysis.metrics):
        PROVIDERS[name].validate(spec)
    for m in spec.analysis.metrics:
        if m.judge.type == "sequential" and not _counts_errors(m):
            raise SpecError(f"analysis.metrics.{m.name}: the sequential judge needs a counting query "
                            "(router: error_rate; prometheus: pack:<pack>/error_rate or slow_ratio>Nms)")
        judges.make_judge(m.judge, m.version)
    return [s.describe() for s in steps]


def preflight(spec: RolloutSpec) -> list[str]:
    """`rollout lint --cluster` and the start of a Kubernetes rollout: permissions and CRDs
    the spec needs, asked of the cluster; raises Unsupported naming everything missing,
    returns notes on what could not be checked."""
    if not isinstance(spec.platform, KubernetesPlatformSpec):
        return []
    from rollout.strategies import plan as make_plan
    from rollout.platforms.kubernetes import preflight as kpre
    from rollout.platforms.kubernetes.platform import connection

    mirror = any(getattr(s, "mirror", 0) for s in make_plan(spec))
    report = kpre.check(connection(spec.platform), spec.platform, mirror)
    if report.problems:
        raise Unsupported("the cluster cannot run this spec: " + "; ".join(report.problems))
    return report.notes


def _counts_errors(m: Any) -> bool:
    if m.provider == "router":
        return m.query in ("error_rate", "errors")
    from rollout.analysis import packs

    if m.provider == "prometheus" and packs.is_pack_ref(m.query):
        return packs.resolve(m.query).bad is not None
    return m.provider != "prometheus"  # a custom provider may carry counts; a raw PromQL template cannot


def spec_from_state(model: str, store: StateStore) -> RolloutSpec:
    """The spec a model's last rollout ran with, so promote/abort/rollback need no -f."""
    ms = store.load(model)
    last = ms.rollout or (ms.history[0] if ms.history else None)
    if last is None:
        raise NotFound(f"model {model!r} has no rollout state here; pass -f spec.yaml (state dir: see --home)")
    return parse_spec(last.spec, source=f"the stored spec of {model}")


def spec_for_repair(model: str, store: StateStore, home: Path) -> RolloutSpec:
    """The spec `abort` and `rollback` run with when not given -f: the stored one, or, when
    the state is gone or damaged and the model has local processes, a spec of the local
    platform under ``home`` (abort and rollback then work from what its router serves)."""
    try:
        return spec_from_state(model, store)
    except (NotFound, StateDamaged):
        if not (home / "local" / model).is_dir():
            raise
    return parse_spec({"model": model, "registry": {"type": "git", "url": str(home / "registry")},
                       "platform": {"type": "local"}}, source=f"the local platform of {model} in {home}")


def build_engine(spec: RolloutSpec, home: Path, command: str, listeners: list[Listener] | None = None,
                 **overrides: Any) -> Engine:
    platform = overrides.pop("platform", None) or make_platform(spec, home)
    registry = overrides.pop("registry", None) or _LazyRegistry(spec, home)
    if "gate" not in overrides:  # webhooks (issue #5): built-in gate checks reach versions through the platform
        from rollout.gates import WebhookCaller

        overrides["gate"] = WebhookCaller(platform, samples=registry.samples)
    from rollout.registry.recorder import RegistryRecorder

    # issue 11: promotions and rollbacks are recorded back in the registry by a listener
    recorder = RegistryRecorder(registry, platform=spec.platform.type, echo=overrides.pop("echo", None))
    if "resolve" not in overrides:  # adopting a served version needs its files: the registry has them
        overrides["resolve"] = lambda model, version: registry.resolve(f"{model}:{version}")
    services = Services(
        store=overrides.pop("store", None) or make_store(spec, home),
        platform=platform,
        providers=overrides.pop("providers", None) or make_providers(spec, platform),
        listeners=[*list(listeners or []), recorder],
        **overrides,
    )
    return Engine(spec, services, command=command)


class _LazyRegistry:
    """The spec's registry, built on first use: engines made for abort or status never
    contact it, and a registry that cannot be built fails the call that needed it."""

    def __init__(self, spec: RolloutSpec, home: Path) -> None:
        self.spec, self.home = spec, home
        self._registry: Registry | None = None

    def _get(self) -> Registry:
        if self._registry is None:
            self._registry = make_registry(self.spec, self.home)
        return self._registry

    def samples(self, version: ModelVersion) -> list[Path]:
        return self._get().samples(version)

    def resolve(self, ref: str) -> ModelVersion:
        return self._get().resolve(ref)

    def record(self, outcome: Any) -> str:
        return self._get().record(outcome)
