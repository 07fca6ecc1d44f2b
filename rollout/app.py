"""The composition root: builds registry, platform, providers, store and engine from a
spec, so the CLI (and the GitHub action, and tests) stay thin and wire things one way.
Unknown names are errors that list the known ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout.analysis.base import MetricProvider
from rollout.analysis.router import RouterProvider
from rollout.engine import Engine, Listener, Services
from rollout.errors import NotFound, SpecError, Unsupported
from rollout.platforms.base import Capabilities, Platform
from rollout.registry.base import Registry
from rollout.spec import GitRegistrySpec, KubernetesPlatformSpec, LocalPlatformSpec, RolloutSpec, parse_spec
from rollout.state import FileStateStore, StateStore, home_dir  # noqa: F401 (home_dir is part of this API)


def make_registry(spec: RolloutSpec, home: Path) -> Registry:
    reg = spec.registry
    if isinstance(reg, GitRegistrySpec):
        from rollout.registry.git import GitRegistry

        return GitRegistry(reg.url, reg.ref, cache_dir=home / "registry")
    raise SpecError(f"registry.type {reg.type!r} is not supported; known: git")  # pragma: no cover


def make_platform(spec: RolloutSpec, home: Path) -> Platform:
    p = spec.platform
    if isinstance(p, LocalPlatformSpec):
        from rollout.platforms.local.platform import LocalPlatform

        return LocalPlatform(spec.model, home, server=p.server, ready_timeout_s=p.ready_timeout_s,
                             router_port=p.router_port)
    if isinstance(p, KubernetesPlatformSpec):
        try:
            from rollout.platforms.kubernetes.platform import KubernetesPlatform
        except ImportError as exc:  # pragma: no cover - until the kubernetes platform lands
            raise Unsupported(f"platform.type 'kubernetes' is not available in this build: {exc}") from None
        return KubernetesPlatform.from_spec(spec)
    raise SpecError(f"platform.type {p.type!r} is not supported; known: local, kubernetes")  # pragma: no cover


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
    providers: dict[str, MetricProvider] = {"router": RouterProvider(platform.endpoint)}
    if spec.analysis.prometheus is not None:
        try:
            from rollout.analysis.prometheus import PrometheusProvider
        except ImportError as exc:  # pragma: no cover - until the prometheus provider lands
            raise Unsupported(f"the prometheus provider is not available in this build: {exc}") from None
        providers["prometheus"] = PrometheusProvider.from_spec(spec.analysis.prometheus)
    return providers


def make_store(spec: RolloutSpec | None, home: Path) -> StateStore:
    if spec is not None and isinstance(spec.platform, KubernetesPlatformSpec):
        try:
            from rollout.platforms.kubernetes.state import ConfigMapStateStore
        except ImportError:  # pragma: no cover
            return FileStateStore(home)
        return ConfigMapStateStore.from_spec(spec)
    return FileStateStore(home)


def lint_warnings(spec: RolloutSpec) -> list[str]:
    """Valid, but probably not what was meant: said by `rollout lint`, never fatal."""
    from strategies import plan as make_plan
    from rollout.steps import AnalysisStep, GateStep, PauseStep, TrafficStep

    warnings = []
    steps = make_plan(spec)
    full = next((i for i, s in enumerate(steps) if isinstance(s, TrafficStep) and s.weight == 100), len(steps))
    if not any(isinstance(s, (AnalysisStep, PauseStep, GateStep)) for s in steps[:full]):
        warnings.append("the plan reaches 100% without any analysis, pause or gate: nothing is measured before "
                        "promotion (add analysis.metrics, or a pause)")
    return warnings


def lint(spec: RolloutSpec) -> list[str]:
    """Everything that would stop this spec halfway through a rollout, found now.
    Returns the plan, described step by step; raises on the first problem."""
    from strategies import plan as make_plan

    steps = make_plan(spec)
    caps = platform_capabilities(spec)
    if any(getattr(s, "mirror", 0) for s in steps) and not caps.mirror:
        raise Unsupported(f"strategy {spec.strategy.type!r} mirrors traffic, but the {spec.platform.type} platform"
                          + (f" with router {spec.platform.router!r}" if isinstance(spec.platform, KubernetesPlatformSpec) else "")
                          + " cannot mirror; use a router that can (gateway-api, istio)")
    if any(getattr(s, "preview", False) for s in steps) and not caps.preview:
        raise Unsupported("strategy 'blue_green' with preview_analysis needs a preview endpoint, "
                          f"which the {spec.platform.type} platform does not offer; set preview_analysis: false")
    known = {"router", "prometheus"}
    for m in spec.analysis.metrics:
        if m.provider not in known:
            raise SpecError(f"analysis.metrics.{m.name}.provider: unknown provider {m.provider!r}; "
                            f"known: {', '.join(sorted(known))}")
        if m.provider == "router" and not isinstance(spec.platform, LocalPlatformSpec):
            raise Unsupported(f"analysis.metrics.{m.name}: provider 'router' reads the local router and works only "
                              "with platform.type local; use prometheus")
        if m.provider == "router":
            from rollout.analysis.router import QUERIES

            if m.query not in QUERIES:
                raise SpecError(f"analysis.metrics.{m.name}.query: unknown router query {m.query!r}; "
                                f"known: {', '.join(QUERIES)}")
        if m.provider == "prometheus":
            from rollout.analysis import packs, promql

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
        if m.judge.type == "sequential" and not _counts_errors(m):
            raise SpecError(f"analysis.metrics.{m.name}: the sequential judge needs a counting query "
                            "(router: error_rate; prometheus: pack:<pack>/error_rate or slow_ratio>Nms)")
    from rollout.analysis.judges import make_judge

    for m in spec.analysis.metrics:
        make_judge(m.judge, m.version)
    return [s.describe() for s in steps]


def preflight(spec: RolloutSpec) -> list[str]:
    """`rollout lint --cluster` and the start of a Kubernetes rollout: permissions and CRDs
    the spec needs, asked of the cluster; raises Unsupported naming everything missing,
    returns notes on what could not be checked."""
    if not isinstance(spec.platform, KubernetesPlatformSpec):
        return []
    from strategies import plan as make_plan
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


def build_engine(spec: RolloutSpec, home: Path, command: str, listeners: list[Listener] | None = None,
                 **overrides: Any) -> Engine:
    platform = overrides.pop("platform", None) or make_platform(spec, home)
    if "gate" not in overrides:  # webhooks (issue #5): built-in gate checks reach versions through the platform
        from rollout.gates import WebhookCaller

        overrides["gate"] = WebhookCaller(platform)
    services = Services(
        store=overrides.pop("store", None) or make_store(spec, home),
        platform=platform,
        providers=overrides.pop("providers", None) or make_providers(spec, platform),
        listeners=list(listeners or []),
        **overrides,
    )
    return Engine(spec, services, command=command)
