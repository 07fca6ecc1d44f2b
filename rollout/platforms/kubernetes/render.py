"""Manifests from templates: the objects the Kubernetes platform applies, as plain dicts.

Templates are YAML files (``manifests/`` in the repository, or the spec's
``platform.templates`` directory), found by their ``rollout.io/template`` annotation.
``${...}`` placeholders are substituted in string values only (never in the YAML text,
so a value cannot inject structure). The fields rollout owns - names, namespace, the
``app.kubernetes.io`` labels, replicas, selectors of the stable Service, and the
routing objects' backends, weights and mirrors - are set here in code, after
substitution, so a user's template cannot get them wrong.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rollout.errors import BadInput, SpecError
from rollout.names import (  # noqa: F401 (re-exported: the platform's names)
    base_name,
    lease_name,
    route_backends,
    stable_name,
    state_name,
    subset_name,
    version_name,
    version_slug,
)
from rollout.platforms.base import Traffic
from rollout.registry.base import ModelVersion, Registry
from rollout.spec import KubernetesPlatformSpec, RolloutSpec

DEFAULT_IMAGE = "seldonio/mlserver:1.7.1"
TEMPLATE_ANNOTATION = "rollout.io/template"
STABLE_ANNOTATION = "rollout.io/stable"
CANDIDATE_ANNOTATION = "rollout.io/candidate"
HTTP_PORT = 8080
VERSION_HEADER = "x-rollout-version"  # on every answer through the gateway: which version served it
MANAGED = {"app.kubernetes.io/managed-by": "rollout"}
ROLES = ("deployment", "version-service", "stable-service", "httproute", "virtualservice", "destinationrule",
         "podmonitor")

# MLServer runtime classes by the registry's `runtime`; a version's metadata.implementation wins.
IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
    "mlflow": "mlserver_mlflow.MLflowRuntime",
    "huggingface": "mlserver_huggingface.HuggingFaceRuntime",
    "catboost": "mlserver_catboost.CatboostModel",
}


def default_templates_dir() -> Path:
    # rollout/manifests: a link to ../manifests in a checkout, a copy in an installed wheel.
    return Path(__file__).resolve().parents[2] / "manifests"


# ----------------------------------------------------------------------------- names (rollout/names.py)


def model_labels(model: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": model, "app.kubernetes.io/component": component, **MANAGED}


def is_ours(obj: dict[str, Any], model: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") == "rollout" and labels.get("app.kubernetes.io/name") == model


# ----------------------------------------------------------------------------- templates


def _substitute(value: Any, values: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        try:
            return string.Template(value).substitute(values)
        except KeyError as exc:
            raise SpecError(f"{where}: unknown placeholder ${{{exc.args[0]}}}; known: "
                            + ", ".join(f"${{{k}}}" for k in sorted(values))) from None
        except ValueError as exc:
            raise SpecError(f"{where}: bad placeholder in {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {_substitute(k, values, where): _substitute(v, values, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, where) for v in value]
    return value


class Templates:
    """The template of each role, loaded once from a directory."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory else default_templates_dir()
        if not self.dir.is_dir():
            raise SpecError(f"platform.templates: {str(self.dir)!r} is not a directory"
                            + ("" if directory else "; set platform.templates to a copy of the manifests/ directory"))
        self.by_role: dict[str, tuple[dict[str, Any], str]] = {}
        for path in sorted(self.dir.glob("*.y*ml")):
            if path.name.startswith("kustomization"):
                continue
            try:
                docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            except yaml.YAMLError as exc:
                raise SpecError(f"platform.templates: {path} is not valid YAML: {exc}") from None
            for doc in docs:
                role = ((doc.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_ANNOTATION)
                if role is None:
                    continue
                if role not in ROLES:
                    raise SpecError(f"{path}: unknown {TEMPLATE_ANNOTATION} {role!r}; known: {', '.join(ROLES)}")
                if role in self.by_role:
                    raise SpecError(f"{path}: a second template for {role!r} (the first is in {self.by_role[role][1]})")
                self.by_role[role] = (doc, str(path))

    def render(self, role: str, values: dict[str, str]) -> dict[str, Any]:
        try:
            doc, path = self.by_role[role]
        except KeyError:
            raise SpecError(f"platform.templates: no template annotated {TEMPLATE_ANNOTATION}: {role} in "
                            f"{self.dir}; found: {', '.join(sorted(self.by_role)) or 'none'}") from None
        obj = _substitute(copy.deepcopy(doc), values, f"{path} ({role})")
        annotations = obj["metadata"].get("annotations") or {}
        annotations.pop(TEMPLATE_ANNOTATION, None)
        if annotations:
            obj["metadata"]["annotations"] = annotations
        else:
            obj["metadata"].pop("annotations", None)
        return obj


# ----------------------------------------------------------------------------- the renderer


def model_uri(version: ModelVersion) -> str:
    """Where the cluster reads the files when no registry is at hand (tests, a hand-made
    ModelVersion): metadata.storage_uri, else the uri, which must be one a pod can fetch.
    The platform and ``rollout render`` ask the registry instead (``Registry.storage_uri``)."""
    from rollout.registry.base import require_cluster_readable

    return require_cluster_readable(version.ref, str(version.metadata.get("storage_uri") or version.uri),
                                    "publish the files to object storage and set metadata.storage_uri")


PVC_MOUNT = "/mnt/pvc"  # where a pvc:// claim is mounted into the storage initializer (as KServe does)
PVC_VOLUME = "model-pvc"


def _pvc(uri: str) -> tuple[str, str] | None:
    """(claim, path inside it) of a ``pvc://<claim>/<path>`` URI, else None."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, path = uri[len("pvc://"):].partition("/")
    from rollout.names import k8s_name

    return k8s_name(claim), path.strip("/")


class Renderer:
    """Everything the platform applies for one model, from the spec and templates."""

    def __init__(self, model: str, spec: KubernetesPlatformSpec, namespace: str | None = None,
                 storage_uri: Callable[[ModelVersion], str] = model_uri) -> None:
        self.model = model
        self.spec = spec
        self.namespace = namespace or spec.namespace
        self.templates = Templates(spec.templates)
        self.storage_uri = storage_uri  # the registry's: where a pod downloads a version's files

    @property
    def stable_host(self) -> str:
        return f"{stable_name(self.model)}.{self.namespace}.svc.cluster.local"

    def _values(self, version: ModelVersion | None = None) -> dict[str, str]:
        values = {"model": self.model, "namespace": self.namespace, "image": self.spec.image or DEFAULT_IMAGE,
                  "storage_initializer": self.spec.storage_initializer, "stable_service": stable_name(self.model)}
        if version is not None:
            impl = version.metadata.get("implementation") or IMPLEMENTATIONS.get(version.runtime)
            if impl is None:
                raise BadInput(f"{version.ref}: runtime {version.runtime!r} has no MLServer implementation; known: "
                               f"{', '.join(sorted(IMPLEMENTATIONS))}, or set metadata.implementation")
            uri = self.storage_uri(version)
            pvc = _pvc(uri)
            values.update(version=version.version, name=version_name(self.model, version.version),
                          model_uri=f"{PVC_MOUNT}/{pvc[1]}" if pvc else uri, implementation=str(impl))
        return values

    def _own(self, obj: dict[str, Any], name: str, component: str, version: str | None = None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        meta["namespace"] = self.namespace
        labels = {**(meta.get("labels") or {}), **model_labels(self.model, component)}
        if version is not None:
            labels["app.kubernetes.io/version"] = version
        meta["labels"] = labels
        return obj

    # -- per version
    def deployment(self, version: ModelVersion, replicas: int) -> dict[str, Any]:
        name = version_name(self.model, version.version)
        obj = self._own(self.templates.render("deployment", self._values(version)), name, "model-server", version.version)
        spec = obj.setdefault("spec", {})
        spec["replicas"] = replicas
        selector = {"app.kubernetes.io/name": self.model, "app.kubernetes.io/version": version.version}
        spec["selector"] = {"matchLabels": selector}
        pod_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **selector, **MANAGED}
        uri = self.storage_uri(version)
        obj["metadata"].setdefault("annotations", {})["rollout.io/model-uri"] = uri
        pvc = _pvc(uri)
        if pvc is not None:
            self._mount_claim(obj, version, pvc[0])
        return obj

    def _mount_claim(self, obj: dict[str, Any], version: ModelVersion, claim: str) -> None:
        """pvc://<claim>/<path>: the claim mounted read-only at /mnt/pvc in the init container
        that reads the model URI (it copies /mnt/pvc/<path>), as KServe does."""
        pod = obj["spec"]["template"].setdefault("spec", {})
        reads = f"{PVC_MOUNT}/"
        init = [c for c in pod.get("initContainers") or [] if any(str(a).startswith(reads) for a in c.get("args") or [])]
        if not init:
            raise SpecError(f"{version.ref}: its files are on the claim {claim!r} (pvc://), but the deployment "
                            "template has no init container whose args take ${model_uri}; nothing can copy them")
        for c in init:
            mounts = [m for m in c.get("volumeMounts") or [] if m.get("name") != PVC_VOLUME]
            c["volumeMounts"] = [*mounts, {"name": PVC_VOLUME, "mountPath": PVC_MOUNT, "readOnly": True}]
        volumes = [v for v in pod.get("volumes") or [] if v.get("name") != PVC_VOLUME]
        pod["volumes"] = [*volumes, {"name": PVC_VOLUME,
                                     "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]

    def version_service(self, version: ModelVersion) -> dict[str, Any]:
        name = version_name(self.model, version.version)
        obj = self._own(self.templates.render("version-service", self._values(version)), name, "model-server",
                        version.version)
        obj["spec"]["selector"] = {"app.kubernetes.io/name": self.model, "app.kubernetes.io/version": version.version}
        return obj

    # -- per model
    def stable_service(self, version: str | None) -> dict[str, Any]:
        """``version`` None selects every version of the model (split by replicas, or Istio subsets)."""
        obj = self._own(self.templates.render("stable-service", self._values()), stable_name(self.model),
                        "stable-service")
        selector = {"app.kubernetes.io/name": self.model}
        if version is not None:
            selector["app.kubernetes.io/version"] = version
        obj["spec"]["selector"] = selector
        return obj

    def pod_monitor(self) -> dict[str, Any]:
        obj = self._own(self.templates.render("podmonitor", self._values()), stable_name(self.model), "monitoring")
        obj["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": self.model, **MANAGED}}
        return obj

    def _route_meta(self, obj: dict[str, Any], traffic: Traffic) -> dict[str, Any]:
        self._own(obj, stable_name(self.model), "routing")
        annotations = obj["metadata"].setdefault("annotations", {})
        annotations[STABLE_ANNOTATION] = traffic.stable or ""
        if traffic.candidate:
            annotations[CANDIDATE_ANNOTATION] = traffic.candidate
        else:
            annotations.pop(CANDIDATE_ANNOTATION, None)
        return obj

    def httproute(self, traffic: Traffic) -> dict[str, Any]:
        obj = self._route_meta(self.templates.render("httproute", self._values()), traffic)
        spec = obj.setdefault("spec", {})
        gw = self.spec.gateway
        if gw is not None:
            parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw.name}
            if gw.namespace:
                parent["namespace"] = gw.namespace
            if gw.section_name:
                parent["sectionName"] = gw.section_name
            spec["parentRefs"] = [parent]
        if self.spec.hosts:
            spec["hostnames"] = list(self.spec.hosts)
        rules = spec.setdefault("rules", [{}])
        if not rules:
            rules.append({})
        rule = rules[0]
        weights = {traffic.stable: 100 - traffic.weight if traffic.candidate else 100, traffic.candidate: traffic.weight}
        rule["backendRefs"] = [self._backend(v, weights[v]) for v in route_backends(traffic.stable, traffic.candidate)]
        filters = [f for f in rule.get("filters") or [] if f.get("type") != "RequestMirror"]
        if traffic.candidate and traffic.mirror:
            filters.append({"type": "RequestMirror", "requestMirror": {
                "backendRef": {"group": "", "kind": "Service", "name": version_name(self.model, traffic.candidate),
                               "port": HTTP_PORT},
                "percent": traffic.mirror}})
        if filters:
            rule["filters"] = filters
        else:
            rule.pop("filters", None)
        return obj

    def _backend(self, version: str, weight: int) -> dict[str, Any]:
        """A version's backendRef. Its filter tells the caller which version answered (as
        the local router's header does) and makes Envoy Gateway give each backend its own
        cluster, so the gateway-api metric pack can tell the versions apart (rollout/names.py)."""
        return {"group": "", "kind": "Service", "name": version_name(self.model, version), "port": HTTP_PORT,
                "weight": weight,
                "filters": [{"type": "ResponseHeaderModifier",
                             "responseHeaderModifier": {"set": [{"name": VERSION_HEADER, "value": version}]}}]}

    def virtual_service(self, traffic: Traffic) -> dict[str, Any]:
        obj = self._route_meta(self.templates.render("virtualservice", self._values()), traffic)
        spec = obj.setdefault("spec", {})
        spec["hosts"] = [self.stable_host, *self.spec.hosts]
        if self.spec.gateway is not None:
            gw = self.spec.gateway
            spec["gateways"] = ["mesh", f"{gw.namespace or self.namespace}/{gw.name}"]
        routes = spec.setdefault("http", [{}])
        if not routes:
            routes.append({})
        http = routes[0]
        dest = []
        if traffic.stable:
            dest.append({"destination": {"host": self.stable_host, "subset": subset_name(traffic.stable),
                                         "port": {"number": HTTP_PORT}},
                         "weight": 100 - traffic.weight if traffic.candidate else 100})
        if traffic.candidate:
            dest.append({"destination": {"host": self.stable_host, "subset": subset_name(traffic.candidate),
                                         "port": {"number": HTTP_PORT}}, "weight": traffic.weight})
        http["route"] = dest
        if traffic.candidate and traffic.mirror:
            http["mirror"] = {"host": self.stable_host, "subset": subset_name(traffic.candidate),
                              "port": {"number": HTTP_PORT}}
            http["mirrorPercentage"] = {"value": float(traffic.mirror)}
        else:
            http.pop("mirror", None)
            http.pop("mirrorPercentage", None)
        return obj

    def destination_rule(self, versions: list[str]) -> dict[str, Any]:
        obj = self._own(self.templates.render("destinationrule", self._values()), stable_name(self.model), "routing")
        obj["spec"]["host"] = self.stable_host
        obj["spec"]["subsets"] = [{"name": subset_name(v), "labels": {"app.kubernetes.io/version": v}}
                                  for v in versions]
        return obj

    # -- the set a router applies for a split
    def routing(self, traffic: Traffic) -> list[dict[str, Any]]:
        router = self.spec.router
        if router == "service":
            return [self.stable_service(_service_selects(traffic))]
        if router == "gateway-api":
            pinned = traffic.candidate if traffic.candidate and traffic.weight == 100 else traffic.stable
            return [self.stable_service(pinned), self.httproute(traffic)]
        versions = [v for v in (traffic.stable, traffic.candidate) if v]
        return [self.stable_service(None), self.destination_rule(versions), self.virtual_service(traffic)]


def _service_selects(traffic: Traffic) -> str | None:
    """Router service: which version the stable Service selects (None: both)."""
    if not traffic.candidate or traffic.weight == 0:
        return traffic.stable
    if traffic.weight == 100:
        return traffic.candidate
    return None


def split_replicas(total: int, weight: int) -> tuple[int, int]:
    """Router service: (stable, candidate) replicas approximating ``weight`` percent
    with ``total`` pods; both sides keep at least one pod while split."""
    if total < 2:
        return 1, 1
    candidate = min(max(round(total * weight / 100), 1), total - 1)
    return total - candidate, candidate


def render_spec(spec: RolloutSpec, ref: str | ModelVersion | None = None, namespace: str | None = None,
                registry: Registry | None = None) -> str:
    """What ``rollout start`` would apply for the first deployment of ``ref`` (default
    ``<model>:latest``): the version's Deployment and Service, the stable Service, the
    router's objects at 100% on that version, and the PodMonitor, as one YAML stream.
    ``registry`` (any type) resolves ``ref`` and says where a pod downloads its files."""
    p = spec.platform
    if not isinstance(p, KubernetesPlatformSpec):
        raise BadInput(f"platform.type is {p.type!r}; only kubernetes has manifests to render")
    if registry is None and not isinstance(ref, ModelVersion):
        raise BadInput("render needs the registry to resolve a reference")
    version = ref if isinstance(ref, ModelVersion) else _resolve(spec, ref, registry)
    r = Renderer(spec.model, p, namespace=namespace,
                 storage_uri=registry.storage_uri if registry is not None else model_uri)
    objects = [r.deployment(version, p.replicas), r.version_service(version),
               *r.routing(Traffic(stable=version.version))]
    if p.pod_monitor:
        objects.append(r.pod_monitor())
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def _resolve(spec: RolloutSpec, ref: str | None, registry: Registry) -> ModelVersion:
    from rollout.registry.base import parse_ref

    parsed = parse_ref(ref or f"{spec.model}:latest")
    if parsed.name != spec.model:
        raise BadInput(f"--version {ref} is for model {parsed.name!r} but the spec is for {spec.model!r}")
    return registry.resolve(parsed)
