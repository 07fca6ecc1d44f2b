"""The rollout spec: one YAML document that says what to roll out, where, and how to judge it.

The meaning of every field is written once, here, in its description; `rollout lint`
and the README both come from these models. Validation errors name the field path and
the allowed values, because users read them in a CI log, not in a debugger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rollout import names, redact, server_template, yamlsafe
from rollout.errors import BadInput, BadYaml, SpecError, printable, short_repr
from rollout.registry.base import validate_model_name


# Bounds every spec section gets from _Strict (a spec comes from outside: see yamlsafe.py).
MAX_DURATION_S = 30 * 24 * 3600  # any *_s field: a step, pause or timeout longer than 30 days is a typo
MAX_COUNT = 1_000_000  # any integer field (limits, retries, replicas, ports)
MAX_TEXT = 16 * 1024  # any string field: queries, URLs, templates

# Types for fields added to spec sections: finite floats, bounded durations and counts.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]


class _Strict(BaseModel):
    """The base of every spec section, so each section added later gets the same rules:

    - unknown fields are errors (a typo must not silently fall back to a default);
    - strict types: ``true`` is not a number, ``"10"`` is not an integer, 2.5 is not a weight;
    - NaN and ±infinity are refused in every float field;
    - every ``*_s`` field is a duration of 0 to 30 days, every integer at most 1,000,000 in
      size (``*_bytes`` fields carry their own bounds), every string at most 16 KiB;
    - a ``url`` / ``*_url`` field carries no credentials (``user:password@``): the spec is
      stored in the rollout state; secrets go in ``*_env`` / ``*_file`` slots.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if isinstance(value, bool) or value is None:
            return value
        if name.endswith("_s") and isinstance(value, (int, float)) and not 0 <= value <= MAX_DURATION_S:
            raise ValueError(f"{value:g} is not a duration of 0 to {MAX_DURATION_S} seconds (30 days)")
        if isinstance(value, int) and abs(value) > MAX_COUNT and not name.endswith("_bytes"):  # sizes bound themselves
            raise ValueError(f"{value} is larger than {MAX_COUNT}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ValueError(f"{len(value)} characters is longer than the {MAX_TEXT}-character limit")
        if isinstance(value, str) and (name == "url" or name.endswith("_url")) and _has_userinfo(value):
            raise ValueError("must not carry credentials (user:password@): the spec is stored in the rollout state "
                             "and printed; give the credential through the environment (an *_env field, or git's "
                             "credential helper for a git URL)")
        return value


def _name_rule(check: Any, value: str) -> str:
    """Run a rollout/names.py validator as a pydantic field rule."""
    try:
        return check(value)  # type: ignore[no-any-return]
    except BadInput as exc:
        raise ValueError(str(exc)) from None


def _has_userinfo(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return False
    # ssh://git@host/... names a login, not a secret; a password, or any user-info over http(s)
    # (https://<token>@host), is a credential.
    return password is not None or (user is not None and parts.scheme in ("http", "https"))


# --------------------------------------------------------------------------- registry


class MetricGateRule(_Strict):
    """A rule on one logged evaluation metric, checked before any traffic moves."""

    min: float | None = Field(None, description="The candidate's value must be >= min")
    max: float | None = Field(None, description="The candidate's value must be <= max")
    max_decrease: float | None = Field(None, ge=0, description="The candidate may be at most this much below "
                                       "the stable version's value (accuracy, auc: higher is better)")
    max_increase: float | None = Field(None, ge=0, description="The candidate may be at most this much above "
                                       "the stable version's value (log loss, error: lower is better)")

    @model_validator(mode="after")
    def _one_bound(self) -> "MetricGateRule":
        if all(v is None for v in (self.min, self.max, self.max_decrease, self.max_increase)):
            raise ValueError("a registry gate rule needs min, max, max_decrease or max_increase")
        return self


class _RegistryCommon(_Strict):
    gate: dict[str, MetricGateRule] = Field(
        default_factory=dict,
        description="Registry gate: logged evaluation metrics (MLflow run metrics, or `metrics:` in model.yaml) "
        "that must hold before any traffic moves, e.g. {accuracy: {max_decrease: 0.01}, auc: {min: 0.9}}. "
        "A metric missing on the candidate (or, for max_decrease/max_increase, on the stable version) refuses "
        "the rollout; it never passes")


def _git_url(v: str) -> str:
    """Local paths, file://, https://, http:// and ssh (ssh:// or user@host:path) only;
    never credentials in the URL (the spec is stored in the rollout state), never git's
    `<transport>::` remote helpers (ext:: runs a command)."""
    from urllib.parse import urlsplit

    if not v or any(ord(c) < 32 for c in v):
        raise ValueError("must be a non-empty path or URL without control characters")
    if "::" in v:
        raise ValueError(f"{v.split('::', 1)[0]}:: remote helpers are not supported (ext:: runs a command); "
                         "use a path, https://, ssh:// or user@host:path")
    if "://" in v:
        parts = urlsplit(v)
        if parts.scheme not in ("file", "https", "http", "ssh"):
            raise ValueError(f"URL scheme {parts.scheme!r} is not supported; use a path, https://, ssh:// or "
                             "user@host:path")
        if parts.scheme in ("https", "http") and "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:token@): the spec is stored in the rollout state; "
                             "use username_env / password_env")
        if parts.password is not None:
            raise ValueError("must not carry a password: use ssh_key_file or password_env")
    elif v.startswith("-"):
        raise ValueError("must not start with '-'")
    return v


class GitRegistrySpec(_RegistryCommon):
    """A git repository with ``models/<name>/<version>/`` (model files + optional model.yaml
    with runtime, metadata and metrics), ``models/<name>/aliases.yaml`` (alias: version),
    or tags ``<name>/<version>`` whose commit holds the files in ``models/<name>/``."""

    type: Literal["git"] = "git"
    url: str = Field(description="Path or URL (https://, ssh://, user@host:path) of the git repository")
    ref: str = Field("HEAD", description="Branch, tag or commit to read the registry at")
    environment_file: str | None = Field(
        None, description="If set (e.g. environments/production.yaml), every promotion and rollback is committed "
        "to this file (model -> version, rollout id, time, outcome) and pushed to `ref` (a branch); a push race "
        "is retried on the new head, never forced")
    username_env: str | None = Field(None, description="https: environment variable holding the user name")
    password_env: str | None = Field(None, description="https: environment variable holding the password or token "
                                     "(git's credential helper reads it when the server asks; never on a command "
                                     "line, in a URL or in a file)")
    ssh_key_file: str | None = Field(None, description="ssh: private key file to use")
    ssh_known_hosts_file: str | None = Field(None, description="ssh: known_hosts file with the server's host key "
                                             "(checked strictly); default the user's ~/.ssh/known_hosts")

    @field_validator("ssh_key_file", "ssh_known_hosts_file")
    @classmethod
    def _ssh_path(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "'\"\\") or any(ord(c) < 32 for c in v)):
            raise ValueError(f"{v!r} is not a usable file path (no quotes, backslashes or control characters)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _git_url(v)

    @field_validator("username_env", "password_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", v):
            raise ValueError(f"{v!r} is not an environment variable name (letters, digits, '_')")
        return v

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9_./]{0,199}", v) or ".." in v or v.endswith((".", "/", ".lock")):
            raise ValueError(f"ref {v!r} is not a valid branch, tag or commit name")
        return v

    @field_validator("environment_file")
    @classmethod
    def _env_file(cls, v: str | None) -> str | None:
        import re

        if v is not None and (not re.fullmatch(r"[A-Za-z0-9_][-A-Za-z0-9_./]{0,199}\.ya?ml", v) or ".." in v
                              or "//" in v):
            raise ValueError(f"environment_file {v!r} must be a relative path inside the repository ending .yaml")
        return v


class MlflowRegistrySpec(_RegistryCommon):
    """The MLflow Model Registry. References: ``name:3``, ``name@champion``, ``name:latest``."""

    type: Literal["mlflow"] = "mlflow"
    tracking_uri: str = Field(description="MLflow tracking server, e.g. http://mlflow:5000 (no credentials in it)")
    token_env: str | None = Field(None, description="Environment variable holding a bearer token")
    token_file: str | None = Field(None, description="File holding a bearer token")
    alias: str = Field("production", description="Alias moved to the promoted version (and back on rollback)")
    record: bool = Field(True, description="Set the alias and rollout tags on promotion and rollback")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one HTTP call to MLflow")
    max_retries: int = Field(1, ge=0, le=10, description="Retries of a failed call (MLflow's default waits ~4 min)")
    artifact_uri_map: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes: how the cluster reads artifact locations MLflow reports, "
        "prefix -> prefix (longest match wins), e.g. {'mlflow-artifacts:/': 's3://ml-artifacts/'} when the "
        "tracking server proxies that bucket, or {'/srv/mlflow/': 'pvc://mlflow-artifacts/'} for a local "
        "artifact root on a volume the cluster mounts. A location that maps to no s3://, gs://, https://, "
        "pvc://... URI is refused (exit 2) before anything is applied")

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"tracking_uri must be http:// or https://, got {v!r}")
        if "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:token@): the spec is stored in the rollout state; "
                             "use token_env or token_file")
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9](?:[-A-Za-z0-9_]{0,61}[A-Za-z0-9])?", v) or v == "latest" \
                or re.fullmatch(r"v\d+", v):
            raise ValueError(f"alias {v!r} is not a valid MLflow alias (letters, digits, '-', '_'; not latest or v<N>)")
        return v

    @field_validator("artifact_uri_map")
    @classmethod
    def _artifact_uri_map(cls, v: dict[str, str]) -> dict[str, str]:
        from urllib.parse import urlsplit

        from rollout.names import CLUSTER_SCHEMES, cluster_readable

        for prefix, target in v.items():
            if not prefix or any(ord(c) < 32 for c in prefix + target):
                raise ValueError(f"prefix {prefix!r}: must be non-empty, without control characters")
            if not cluster_readable(target):
                raise ValueError(f"{target!r} is not a URI a cluster's storage initializer reads "
                                 f"({', '.join(s + '://' for s in CLUSTER_SCHEMES)})")
            if "@" in urlsplit(target).netloc:
                raise ValueError("a target must not carry credentials (user:password@); give the storage "
                                 "initializer its credentials in the cluster")
        return v

    @model_validator(mode="after")
    def _one_token(self) -> "MlflowRegistrySpec":
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        return self


RegistrySpec = Annotated[Union[GitRegistrySpec, MlflowRegistrySpec], Field(discriminator="type")]


# --------------------------------------------------------------------------- platform


class LocalPlatformSpec(_Strict):
    type: Literal["local"] = "local"
    server: str = Field(
        "mlserver",
        description="Model server: 'mlserver', 'builtin' (the project's small V2 server) or a "
        "command template with {port}, {model_dir}, {name} and {version}",
    )
    replicas: int = Field(1, ge=1, le=1, description="Processes per version (1 on the local platform)")
    ready_timeout_s: float = Field(60.0, gt=0, description="How long a new version may take to become ready")
    router_port: int = Field(0, ge=0, le=65535, description="Port of the model's router; 0 picks a free one")
    router_grpc_port: int = Field(0, ge=0, le=65535, description="Port of the router's V2 gRPC endpoint "
                                  "(inference.GRPCInferenceService); 0 picks a free one")
    backend_timeout_s: float = Field(60.0, gt=0, le=3600, description="How long the router waits for a model "
                                     "server's answer to a live request before answering 504")
    shadow_timeout_s: float = Field(10.0, gt=0, le=3600, description="How long the router waits for the candidate's "
                                    "answer to a mirrored request; a shadow that takes longer counts as the "
                                    "shadow's timeout, never as a live error of the candidate")
    body_limit_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=2**31 - 1, description="Largest request body "
                                  "(REST) or message (gRPC) the router accepts; larger ones get 413 / "
                                  "RESOURCE_EXHAUSTED")
    data_plane: Literal["auto", "nginx", "python"] = Field(
        "auto", description="Who relays inference through the router: 'nginx' (nginx with its Lua module in "
        "front of the router process: ~0.1 ms of CPU per request instead of ~1; needs the Debian packages nginx, "
        "libnginx-mod-http-lua and lua-cjson), 'python' (the router process alone), or 'auto' (nginx when "
        "installed, else python)")
    controller: bool = Field(False, description="Start `rollout controller` for the state home beside the router "
                             "(when the platform deploys or moves traffic and no controller leads), so detached "
                             "rollouts, retirements and rollback hooks happen on time with no CLI running; "
                             "`rollout local status` shows it, `rollout local down` stops it")

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if v not in ("builtin", "mlserver"):
            _name_rule(server_template.parse_template, v)
        return v


class GatewayRefSpec(_Strict):
    name: str = Field(description="Name of the Gateway the HTTPRoute attaches to (Istio: the gateway the VirtualService binds)")
    namespace: str | None = Field(None, description="Namespace of the Gateway; default the platform's namespace")
    section_name: str | None = Field(None, description="Listener of the Gateway (Gateway API sectionName)")


class KubernetesPlatformSpec(_Strict):
    type: Literal["kubernetes"] = "kubernetes"
    namespace: str = Field("default", description="Namespace of the model's objects, state ConfigMap and Lease "
                           "(overridden by `rollout --namespace`)")
    context: str | None = Field(None, description="kubeconfig context (overridden by `rollout --context`); "
                                "default the current context")
    kubeconfig: str | None = Field(None, description="kubeconfig file; default $KUBECONFIG, then ~/.kube/config, "
                                   "then the in-cluster service account")
    router: Literal["service", "gateway-api", "istio"] = Field(
        "service", description="service: one Service, weights approximated by replica counts, no mirror; "
        "gateway-api: HTTPRoute weights and RequestMirror; istio: VirtualService weights, mirror, mirrorPercentage")
    gateway: GatewayRefSpec | None = Field(None, description="Gateway (parentRef) for router gateway-api; "
                                           "optional ingress gateway for istio")
    hosts: list[str] = Field(default_factory=list, description="Host names the route answers for (HTTPRoute "
                             "hostnames / extra VirtualService hosts)")
    replicas: int = Field(1, ge=1, description="Pods per version (router service splits this many by weight)")
    image: str | None = Field(None, description="Model-server image; default seldonio/mlserver:1.7.1")
    storage_initializer: str = Field("kserve/storage-initializer:v0.14.1",
                                     description="Init-container image that downloads the model URI into the pod")
    pod_monitor: bool = Field(True, description="Create a Prometheus Operator PodMonitor for the model")
    ready_timeout_s: float = Field(300.0, gt=0, description="How long a Deployment may take to become ready")
    lease_duration_s: float = Field(30.0, ge=5, description="Lease duration of the per-model lock; a holder "
                                    "that stops renewing loses it after this long")
    templates: str | None = Field(None, description="Directory with the user's own manifest templates")
    options: dict[str, Any] = Field(default_factory=dict, description="Router-specific settings")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _name_rule(names.k8s_namespace, v)

    @model_validator(mode="after")
    def _gateway_for_gateway_api(self) -> "KubernetesPlatformSpec":
        if self.router == "gateway-api" and self.gateway is None:
            raise ValueError("router gateway-api needs platform.gateway.name (the Gateway the HTTPRoute attaches to)")
        return self


PlatformSpec = Annotated[Union[LocalPlatformSpec, KubernetesPlatformSpec], Field(discriminator="type")]


# --------------------------------------------------------------------------- analysis


MIN_REQUESTS_DESCRIPTION = (
    "Requests a version must have served in the window before this judge may pass or fail; below it the "
    "measurement is 'not enough data' (inconclusive). Applies when the provider reports request counts "
    "(router queries, Prometheus pack queries); 0 turns the check off")


class ThresholdJudgeSpec(_Strict):
    type: Literal["threshold"] = "threshold"
    min: float | None = Field(None, description="The value must be >= min")
    max: float | None = Field(None, description="The value must be <= max")
    min_requests: int = Field(50, ge=0, description=MIN_REQUESTS_DESCRIPTION)

    @model_validator(mode="after")
    def _one_bound(self) -> "ThresholdJudgeSpec":
        if self.min is None and self.max is None:
            raise ValueError("a threshold judge needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class CompareJudgeSpec(_Strict):
    type: Literal["compare"] = "compare"
    max_relative_increase: float | None = Field(
        None, ge=0, description="Candidate may exceed stable by at most this fraction (0.1 = 10%)"
    )
    max_absolute_increase: float | None = Field(None, ge=0, description="Candidate may exceed stable by at most this much")
    higher_is_better: bool = Field(False, description="True for metrics like accuracy or agreement")
    min_requests: int = Field(50, ge=0, description=MIN_REQUESTS_DESCRIPTION + " (per version: both must have it)")

    @model_validator(mode="after")
    def _one_bound(self) -> "CompareJudgeSpec":
        if self.max_relative_increase is None and self.max_absolute_increase is None:
            raise ValueError("a compare judge needs max_relative_increase or max_absolute_increase")
        return self


class SequentialJudgeSpec(_Strict):
    """Anytime-valid test on counts (errors, or requests slower than a histogram bucket)
    per version, on the requests each version actually served in each measurement
    interval (valid for any split); see rollout/analysis/sequential.py. Needs a counting
    query: router error_rate, or a Prometheus pack query (error_rate, slow_ratio>Nms)."""

    type: Literal["sequential"] = "sequential"
    alpha: float = Field(
        0.05, gt=0, lt=1,
        description="Bound on the false-rollback rate of a whole rollout when the versions are identical, "
        "however often it measures (failure evidence carries over from step to step); with several sequential "
        "metrics the bound is the sum of their alphas",
    )
    min_relative_effect: float = Field(
        0.0, ge=0, description="Regressions smaller than this are tolerated (0.1: up to 10% more bad requests)"
    )
    early_pass_effect: float | None = Field(
        1.0, gt=0,
        description="Pass a step early once this step's data rule out a relative increase this large (1.0 = "
        "doubling of bad requests), wrongly with probability at most beta; null: a passing step runs its full "
        "duration. Pass evidence is never carried to the next step",
    )
    beta: float = Field(0.05, gt=0, lt=1, description="Bound on passing early a candidate at least early_pass_effect worse")
    detectable_effect: float = Field(
        1.0, gt=0,
        description="A step that reaches its deadline without failing passes only if its traffic gave the test "
        "`power` to detect a relative increase this large (1.0 = doubling); otherwise it is inconclusive. The "
        "smallest effect the step could detect is shown with every measurement",
    )
    power: float = Field(0.8, gt=0, lt=1, description="Detection probability behind detectable_effect")
    unit: Literal["requests", "buckets"] = Field(
        "requests",
        description="requests: a likelihood-ratio test on bad-request counts, valid when bad requests are "
        "independent given each version's rate (Poisson-like). buckets: a betting test whose units are the "
        "measurement intervals, valid under any clustering of errors inside an interval (bursts, per-pod "
        "failures), at a large cost in power; see the README's detection table",
    )
    warmup_s: float = Field(
        30.0, ge=0,
        description="The first seconds of the rollout's first analysis step are not judged (a new candidate's "
        "cold start); they are reported separately in the measurement's detail",
    )
    srm_alpha: float = Field(
        0.001, gt=0, lt=1,
        description="Sample-ratio-mismatch level: a request split far from the configured one is reported in "
        "the reason (a diagnostic; the test uses the counts each version served, so it stays valid)",
    )

    @model_validator(mode="after")
    def _effects(self) -> "SequentialJudgeSpec":
        if self.early_pass_effect is not None and self.early_pass_effect <= self.min_relative_effect:
            raise ValueError(f"early_pass_effect {self.early_pass_effect} must be greater than "
                             f"min_relative_effect {self.min_relative_effect}")
        if self.detectable_effect <= self.min_relative_effect:
            raise ValueError(f"detectable_effect {self.detectable_effect} must be greater than "
                             f"min_relative_effect {self.min_relative_effect}")
        return self


class AgreementJudgeSpec(_Strict):
    type: Literal["agreement"] = "agreement"
    min: float = Field(0.99, ge=0, le=1, description="Share of mirrored requests whose outputs matched stable's")


JudgeSpec = Annotated[
    Union[ThresholdJudgeSpec, CompareJudgeSpec, SequentialJudgeSpec, AgreementJudgeSpec],
    Field(discriminator="type"),
]


class MetricSpec(_Strict):
    name: str = Field(description="A name for reports: error-rate, latency-p99, ...")
    provider: str = Field("router", description="Metric provider: 'router' (local router counters) or 'prometheus'")
    query: str = Field(
        description="For 'router': error_rate, request_rate, latency_p50_ms, latency_p99_ms, latency_mean_ms, "
        "agreement, requests, errors. For 'prometheus': a PromQL template with {{model}}, {{version}}, "
        "{{namespace}} and {{interval}} (the time since the analysis step began; values are escaped and "
        "refused if they could leave a label matcher), or a metric pack query 'pack:<pack>/<query>' with "
        "pack local-router, mlserver, istio, gateway-api or knative and query requests, errors, "
        "request_rate, error_rate, success_rate, latency_mean_ms, latency_p50_ms, latency_p90_ms, "
        "latency_p99_ms, slow_ratio>250ms (a histogram bucket) or agreement (local-router); mlserver has "
        "no histogram: latency_mean_ms only. See rollout/analysis/packs.py"
    )
    judge: JudgeSpec
    version: Literal["candidate", "stable"] = Field("candidate", description="Which version a threshold is read for")
    on_no_data: Literal["inconclusive", "fail", "pass"] = Field(
        "inconclusive", description="What a query that returns no data means for this metric"
    )
    failure_limit: int = Field(
        0, ge=0, description="Failed measurements tolerated within one analysis step: N tolerated, the N+1th fails "
        "the step at once (a failure a sequential judge calls final fails at once whatever the limit)"
    )
    consecutive_error_limit: int = Field(
        4, ge=0, description="Provider errors in a row tolerated; one more makes the step inconclusive (never a pass)"
    )
    dry_run: bool = Field(False, description="Measured and reported, never decides")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 63:
            raise ValueError("metric name must be 1-63 characters")
        return v


class PrometheusSpec(_Strict):
    url: str = Field(description="Base URL of the Prometheus HTTP API")
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    basic_auth_user_env: str | None = None
    basic_auth_password_env: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra non-secret headers; they are stored with the rollout state")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="Header name -> environment variable holding its (secret) value")
    ca_file: str | None = None
    verify_tls: bool = True
    timeout_s: float = Field(10.0, gt=0)
    scrape_interval_s: float = Field(
        15.0, gt=0, le=3600,
        description="How often Prometheus scrapes the serving metrics: a count window is never shorter than "
        "min_scrapes of these (a shorter one holds fewer than two samples of a counter)")
    min_scrapes: int = Field(2, ge=2, le=100, description="Scrape intervals the shortest count window spans")

    # The spec is stored in the rollout state (a file, or a ConfigMap): nothing secret may be in it.
    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if urlsplit(v).password is not None or "@" in urlsplit(v).netloc:
            raise ValueError("must not carry credentials (user:password@): the spec is stored in the rollout state; "
                             "use basic_auth_user_env / basic_auth_password_env")
        return v

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, v: dict[str, str]) -> dict[str, str]:
        secret = [k for k in v if any(w in k.lower() for w in ("auth", "token", "secret", "key", "cookie", "password"))]
        if secret:
            raise ValueError(f"header(s) {', '.join(secret)} look secret: the spec is stored in the rollout state; "
                             "put them in headers_env (header name -> environment variable)")
        return v


class AnalysisSpec(_Strict):
    interval_s: float = Field(10.0, gt=0, description="Time between measurements within an analysis step")
    duration_s: float = Field(60.0, ge=0, description="Default length of one analysis step")
    inconclusive: Literal["pause", "fail"] = Field(
        "pause", description="An inconclusive analysis pauses for `rollout promote` (exit 4) or fails (roll back)"
    )
    metrics: list[MetricSpec] = Field(default_factory=list)
    prometheus: PrometheusSpec | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> "AnalysisSpec":
        names = [m.name for m in self.metrics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(dupes)}")
        if any(m.provider == "prometheus" for m in self.metrics) and self.prometheus is None:
            raise ValueError("a metric uses provider 'prometheus' but analysis.prometheus.url is not set")
        return self


# --------------------------------------------------------------------------- strategies


class SetWeightStep(_Strict):
    set_weight: int = Field(ge=0, le=100, description="Candidate's share of traffic, percent")


class PauseSpec(_Strict):
    duration_s: float | None = Field(None, ge=0, description="Seconds to wait; absent waits for `rollout promote`")


class PauseStep(_Strict):
    pause: PauseSpec


class AnalysisStepSpec(_Strict):
    duration_s: float | None = Field(None, ge=0, description="Overrides analysis.duration_s")
    metrics: list[str] | None = Field(None, description="Names of analysis metrics to use; default all")


class AnalysisStep(_Strict):
    analysis: AnalysisStepSpec


class GateStepSpec(_Strict):
    url: str
    timeout_s: float = Field(10.0, gt=0)


class GateStep(_Strict):
    gate: GateStepSpec


CanaryStep = Union[SetWeightStep, PauseStep, AnalysisStep, GateStep]


class CanarySpec(_Strict):
    type: Literal["canary"] = "canary"
    weights: list[int] | None = Field(
        None, description="Shorthand: set each weight in turn, with an analysis after each"
    )
    steps: list[CanaryStep] | None = Field(None, description="Explicit steps (set_weight, pause, analysis, gate)")
    scale_down_delay_s: float = Field(
        30.0, ge=0, description="Keep the old stable running this long after promotion so rollback is instant"
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("weights must not be empty")
        for w in v:
            if not 0 <= w <= 100:
                raise ValueError(f"weight {w} is outside 0-100")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"weights must increase step by step, got {v}")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> "CanarySpec":
        if self.weights is not None and self.steps is not None:
            raise ValueError("give either weights or steps, not both")
        return self


class BlueGreenSpec(_Strict):
    type: Literal["blue_green"] = "blue_green"
    preview_analysis: bool = Field(True, description="Run the analysis against the preview endpoint before switching")
    auto_promotion_s: float | None = Field(
        0.0, ge=0, description="Seconds to wait after the preview before switching (default 0: switch at once); "
        "null waits for `rollout promote`"
    )
    post_promotion_analysis: bool = Field(False, description="Run the analysis again after the switch")
    scale_down_delay_s: float = Field(30.0, ge=0, description="Keep the old version this long for instant rollback")


class ShadowSpec(_Strict):
    type: Literal["shadow"] = "shadow"
    mirror_percent: int = Field(100, ge=1, le=100, description="Percent of live requests copied to the candidate")
    on_success: Literal["promote", "discard"] = Field(
        "promote", description="After a passing analysis: switch all traffic to the candidate, or retire it"
    )
    scale_down_delay_s: float = Field(30.0, ge=0)


StrategySpec = Annotated[Union[CanarySpec, BlueGreenSpec, ShadowSpec], Field(discriminator="type")]


# --------------------------------------------------------------------------- webhooks (issue #5; rollout/gates.py, rollout/notify.py)

HookType = Literal["confirm-rollout", "pre-rollout", "confirm-traffic-increase", "confirm-promotion",
                   "post-rollout", "rollback"]
NotifyEvent = Literal["started", "step", "paused", "promoted", "completed", "rolled_back", "aborted", "failed"]
NOTIFY_EVENTS: tuple[str, ...] = ("started", "step", "paused", "promoted", "completed", "rolled_back", "aborted", "failed")


def _one_source(where: str, **sources: object) -> None:
    given = [k for k, v in sources.items() if v is not None]
    if len(given) != 1:
        raise ValueError(f"{where} needs exactly one of {', '.join(sources)}; got {', '.join(given) or 'none'}")


class HookSpec(_Strict):
    """A webhook called at a point of the rollout, named and meaning what Flagger's do.

    - confirm-rollout: asked before the first step (the candidate is deployed, with no
      traffic); blocks while it answers non-2xx, re-asked every analysis.interval_s.
    - pre-rollout: called after the candidate is registered at 0% and before any traffic
      reaches it; a non-2xx (after ``retries``) rolls the rollout back.
    - confirm-traffic-increase: asked before each traffic increase; blocks like confirm-rollout.
    - confirm-promotion: asked before the switch to 100% that promotes; blocks likewise.
    - post-rollout: told after the rollout ended (promoted, rolled back, aborted, failed);
      informational, its answer changes nothing.
    - rollback: polled while the rollout waits (analysis, timed pauses, confirm-* gates);
      a 2xx answer rolls the rollout back.

    Any 2xx passes. Every call POSTs JSON: name, type, model, rollout id, stable and
    candidate versions, phase, step, the last measurements, and ``metadata``.
    """

    name: str = Field(description="Shown in events, payloads and the job summary")
    type: HookType
    url: str | None = Field(None, description="The URL to POST to (stored in the rollout state: use url_env for secrets)")
    url_env: str | None = Field(None, description="Name of an environment variable that holds the URL")
    url_file: str | None = Field(None, description="Path of a file that holds the URL")
    builtin: Literal["samples"] | None = Field(
        None, description="A check run by rollout itself instead of a URL: 'samples' sends "
        "models/<name>/<version>/samples/*.json (V2 inference request bodies) to the candidate and the "
        "stable version and fails if the candidate errs or answers with other output names, datatypes or "
        "shapes (pre-rollout only)")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one HTTP call")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts when the URL is unreachable, times out "
                         "or answers 502/503/504; any other answer is final")
    wait_s: float | None = Field(
        None, ge=0, description="confirm-* only: how long a run keeps re-asking before it pauses (exit 4; "
        "rerun `rollout start` to ask again, or `rollout promote` to pass); absent waits until confirmed")
    metadata: dict[str, str] = Field(default_factory=dict, description="Passed as is in the payload")

    @model_validator(mode="after")
    def _source(self) -> "HookSpec":
        _one_source(f"webhook {self.name!r}", url=self.url, url_env=self.url_env, url_file=self.url_file,
                    builtin=self.builtin)
        if self.builtin is not None and self.type != "pre-rollout":
            raise ValueError(f"webhook {self.name!r}: builtin checks run as type pre-rollout, not {self.type}")
        if self.wait_s is not None and not self.type.startswith("confirm-"):
            raise ValueError(f"webhook {self.name!r}: wait_s applies to confirm-* hooks only")
        return self


class NotificationSpec(_Strict):
    """Where phase changes are announced. The URL is a secret: it is read from an
    environment variable or a file when sending, never stored, printed or logged."""

    name: str
    type: Literal["webhook", "slack"] = Field(
        description="'webhook': POST a JSON event; 'slack': a Slack incoming-webhook message")
    url_env: str | None = Field(None, description="Name of an environment variable that holds the URL")
    url_file: str | None = Field(None, description="Path of a file that holds the URL")
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS),
                                      description="Which events to send; 'step' is a step that passed")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one HTTP call")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts after a failed send")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            raise ValueError(f"notification {data.get('name', '')!r}: a literal url would be stored in the rollout "
                             "state; put it in an environment variable (url_env) or a file (url_file)")
        return data

    @model_validator(mode="after")
    def _source(self) -> "NotificationSpec":
        _one_source(f"notification {self.name!r}", url_env=self.url_env, url_file=self.url_file)
        return self


class WebhooksSpec(_Strict):
    hooks: list[HookSpec] = Field(default_factory=list, description="Gates and hooks (Flagger semantics)")
    notify: list[NotificationSpec] = Field(default_factory=list, description="Notifications of phase changes")

    @model_validator(mode="after")
    def _unique_names(self) -> "WebhooksSpec":
        names = [h.name for h in self.hooks] + [n.name for n in self.notify]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique; repeated: {', '.join(dupes)}")
        return self

# --------------------------------------------------------------------------- end of webhooks


class RolloutSpec(_Strict):
    """A whole rollout spec, as written in rollout.yaml."""

    model: str = Field(description="Model name (DNS-1123 label)")
    registry: RegistrySpec
    platform: PlatformSpec = Field(default_factory=LocalPlatformSpec)
    strategy: StrategySpec = Field(default_factory=CanarySpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    webhooks: "WebhooksSpec" = Field(default_factory=lambda: WebhooksSpec(),
                                     description="Gates (Flagger-style hooks) and notifications")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        try:
            validate_model_name(v)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        return v


def _describe(errors: list[dict[str, Any]]) -> str:
    """One line per bad field: its dotted path, and what was wrong with it (inputs shortened)."""
    lines = []
    for err in errors[:20]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"got {short_repr(err.get('input'))}; {msg}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] in ("int_type", "float_type", "string_type", "bool_type", "finite_number", "int_from_float"):
            msg = f"got {short_repr(err.get('input'))}; {msg}"
        lines.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 20:
        lines.append(f"and {len(errors) - 20} more")
    return printable("; ".join(lines), keep_newlines=False)


def parse_spec(data: Any, source: str = "spec") -> RolloutSpec:
    """Validate a spec document; SpecError lists every bad field. The secrets behind its
    credential slots are registered with the redactor (rollout/redact.py) from here on."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_describe(exc.errors())}") from None
    except RecursionError:  # a document built in Python, not read by load_spec
        raise SpecError(f"{source}: nested too deeply") from None
    redact.register_spec(spec)
    return spec


def load_spec(path: str | Path, max_bytes: int = yamlsafe.MAX_BYTES) -> RolloutSpec:
    """Read and validate a spec file with the safe loader (size cap, no aliases, no
    duplicate keys, bounded nesting, no NaN/inf: see rollout/yamlsafe.py)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise SpecError(f"spec file {printable(str(p), 300)!r} does not exist") from None
    except OSError as exc:
        raise SpecError(f"spec file {printable(str(p), 300)!r} cannot be read: {exc.strerror}") from None
    return spec_from_yaml(data, str(p), max_bytes)


def spec_from_yaml(data: str | bytes, source: str = "spec", max_bytes: int = yamlsafe.MAX_BYTES) -> RolloutSpec:
    """Parse and validate a spec document's text; every problem is a SpecError (exit 2)."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise SpecError(f"{source}: larger than the {max_bytes}-byte limit for a spec file")
    try:
        doc = yamlsafe.load(data, source, max_bytes=max_bytes)
    except BadYaml as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(doc, source=source)
