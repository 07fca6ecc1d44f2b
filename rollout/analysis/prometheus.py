"""The ``prometheus`` metric provider, on prometheus-api-client.

A query has three outcomes, never conflated: a value; no data (an empty vector, or
NaN); a provider error (connection refused, timeout, HTTP error, a bad query). The
query is a PromQL template (``{{model}}``, ``{{version}}``, ``{{namespace}}``,
``{{interval}}``) or a pack reference ``pack:<pack>/<query>`` (see ``packs``).

Credentials come from the environment or a file, are read at query time (a mounted
token may rotate) and are never printed, logged or put into an error message: every
message that leaves this module is scrubbed of them and of URL user-info.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from rollout.analysis import packs, promql
from rollout.analysis.base import Measurement, ProviderUnavailable, QueryContext
from rollout.errors import SpecError
from rollout.spec import PrometheusSpec

log = logging.getLogger("rollout.analysis.prometheus")

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class _NoValue(Exception):
    """The query ran and returned nothing (empty vector or NaN)."""


@dataclass(frozen=True)
class Credentials:
    """Where secrets come from; the values themselves are read per query and never stored."""

    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    basic_auth_user_env: str | None = None
    basic_auth_password_env: str | None = None
    headers_env: tuple[tuple[str, str], ...] = ()  # (header, environment variable)

    def resolve(self) -> tuple[dict[str, str], tuple[str, str] | None, list[str]]:
        """(auth headers, basic auth tuple, secret strings to scrub from messages)."""
        headers: dict[str, str] = {}
        secrets: list[str] = []
        token = None
        if self.bearer_token_env:
            token = os.environ.get(self.bearer_token_env)
            if not token:
                raise ProviderUnavailable(f"environment variable {self.bearer_token_env} (bearer token) is not set")
        elif self.bearer_token_file:
            try:
                token = Path(self.bearer_token_file).read_text().strip()
            except OSError as exc:
                raise ProviderUnavailable(f"bearer token file {self.bearer_token_file} cannot be read: "
                                          f"{exc.strerror}") from None
        if token:
            headers["Authorization"] = f"Bearer {token}"
            secrets.append(token)
        for header, env in self.headers_env:
            value = os.environ.get(env)
            if not value:
                raise ProviderUnavailable(f"environment variable {env} (header {header}) is not set")
            headers[header] = value
            secrets.append(value)
        auth = None
        if self.basic_auth_user_env or self.basic_auth_password_env:
            user = os.environ.get(self.basic_auth_user_env or "", "")
            password = os.environ.get(self.basic_auth_password_env or "", "")
            missing = [n for n, v in ((self.basic_auth_user_env, user), (self.basic_auth_password_env, password))
                       if n and not v]
            if missing:
                raise ProviderUnavailable(f"environment variable(s) {', '.join(missing)} (basic auth) not set")
            auth = (user, password)
            secrets += [s for s in (password, user) if s]
        return headers, auth, secrets


@dataclass
class PrometheusProvider:
    url: str
    credentials: Credentials = field(default_factory=Credentials)
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True  # False, True or a CA bundle path
    timeout_s: float = 10.0
    name: str = "prometheus"

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        session = requests.Session()
        session.verify = self.verify
        # One quick retry on a dropped connection; an outage must show up as an error
        # within the timeout, not after minutes of back-off.
        retry = Retry(total=1, connect=1, read=0, status=0, backoff_factor=0)
        self._client = PrometheusConnect(url=self.url, session=session, retry=retry, timeout=self.timeout_s)

    @classmethod
    def from_spec(cls, spec: PrometheusSpec) -> "PrometheusProvider":
        if spec.bearer_token_env and spec.bearer_token_file:
            raise SpecError("analysis.prometheus: give bearer_token_env or bearer_token_file, not both")
        if spec.ca_file and not Path(spec.ca_file).is_file():
            raise SpecError(f"analysis.prometheus.ca_file: {spec.ca_file} does not exist")
        return cls(
            url=spec.url,
            credentials=Credentials(spec.bearer_token_env, spec.bearer_token_file,
                                    spec.basic_auth_user_env, spec.basic_auth_password_env,
                                    tuple(spec.headers_env.items())),
            headers=dict(spec.headers),
            verify=(spec.ca_file or True) if spec.verify_tls else False,
            timeout_s=spec.timeout_s,
        )

    # ------------------------------------------------------------------ public

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        """Never raises: an outage or a bad query is a Measurement with status ERROR."""
        secrets: list[str] = []
        try:
            headers, auth, secrets = self.credentials.resolve()
            if packs.is_pack_ref(query):
                return self._pack(packs.resolve(query), ctx, headers, auth)
            return Measurement.of(self._instant(promql.render(query, ctx), headers, auth))
        except _NoValue as exc:
            return Measurement.no_data(self._scrub(str(exc), secrets))
        except (ProviderUnavailable, SpecError, promql.UnsafeLabelValue, KeyError) as exc:
            return Measurement.failed(self._scrub(str(exc).strip("'\""), secrets))

    def query_range(self, query: str, ctx: QueryContext, start: float, end: float,
                    step_s: float = 1.0) -> list[tuple[float, float]]:
        """One series over [start, end] for judges that need a shape, not a number.
        Raises ProviderUnavailable (scrubbed) on an outage; an empty list is no data."""
        headers, auth, secrets = self.credentials.resolve()
        text = promql.render(query, ctx)
        try:
            self._client.headers, self._client.auth = {**self.headers, **headers}, auth
            result = self._client.custom_query_range(
                text, start_time=datetime.fromtimestamp(start, timezone.utc),
                end_time=datetime.fromtimestamp(end, timezone.utc), step=f"{step_s:g}s")
        except (requests.RequestException, PrometheusApiClientException) as exc:
            raise ProviderUnavailable(self._scrub(self._describe(exc), secrets)) from None
        if not result:
            return []
        if len(result) > 1:
            raise ProviderUnavailable(f"range query returned {len(result)} series; aggregate it to one")
        return [(float(t), float(v)) for t, v in result[0].get("values", []) if not math.isnan(float(v))]

    # ------------------------------------------------------------------ internals

    def _pack(self, pq: packs.PackQuery, ctx: QueryContext, headers: dict[str, str],
              auth: tuple[str, str] | None) -> Measurement:
        if pq.value is not None:
            return Measurement.of(self._instant(promql.render(pq.value, ctx), headers, auth))
        assert pq.requests is not None and pq.bad is not None
        n = self._instant(promql.render(pq.requests, ctx), headers, auth)
        if n is None or n <= 0:
            raise _NoValue(f"{ctx.model}:{ctx.version} served no requests in the last {promql.interval(ctx.window_s)} "
                           f"({pq.pack} pack)")
        # No error series while there were requests means no errors (counters with a
        # label appear only once incremented): 0, not "no data".
        bad = self._instant(promql.render(pq.bad, ctx), headers, auth) or 0.0
        bad = min(max(bad, 0.0), n)
        detail = {"requests": n, pq.bad_key: bad, "bad": bad}
        value = {"requests": n, "bad": bad, "rate": n / max(ctx.window_s, 1.0), "ratio": bad / n,
                 "success": 1.0 - bad / n}[pq.derive]
        return Measurement.of(value, detail)

    def _instant(self, text: str, headers: dict[str, str], auth: tuple[str, str] | None) -> float | None:
        """The query's single value; None for an empty vector or NaN. Raises ProviderUnavailable."""
        try:
            self._client.headers, self._client.auth = {**self.headers, **headers}, auth
            result = self._client.custom_query(text)
        except (requests.RequestException, PrometheusApiClientException) as exc:
            raise ProviderUnavailable(self._describe(exc)) from None
        except ValueError as exc:  # a 200 with a body that is not the API's JSON
            raise ProviderUnavailable(f"Prometheus at {self._safe_url()} answered with unreadable JSON: {exc}") from None
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            value = float(result[1])  # a scalar result: [time, "value"]
        elif not result:
            return None
        elif len(result) > 1:
            labels = ", ".join(str(r.get("metric", {})) for r in result[:3])
            raise ProviderUnavailable(f"query returned {len(result)} series ({labels}...); aggregate it to one "
                                      "value with sum(), avg() or max()")
        else:
            value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def _safe_url(self) -> str:
        return _USERINFO.sub("", self.url)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, requests.Timeout):
            return f"Prometheus at {self._safe_url()} did not answer within {self.timeout_s:g}s"
        if isinstance(exc, requests.ConnectionError):
            return f"Prometheus at {self._safe_url()} is unreachable ({type(exc).__name__})"
        if isinstance(exc, PrometheusApiClientException):
            text = str(exc)
            m = re.search(r"HTTP Status Code (\d+)", text)
            err = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
            code = m.group(1) if m else "?"
            return f"Prometheus at {self._safe_url()} answered HTTP {code}" + (f": {err.group(1)}" if err else "")
        return f"Prometheus at {self._safe_url()}: {type(exc).__name__}"

    def _scrub(self, text: str, secrets: list[str]) -> str:
        text = _USERINFO.sub("", text)
        for s in secrets:
            if s:
                text = text.replace(s, "***")
        return text
