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

import base64
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import quote
from datetime import datetime, timezone
from pathlib import Path

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from rollout.analysis import packs, promql
from rollout.analysis.base import Measurement, ProviderUnavailable, QueryContext
from rollout.errors import SpecError
from rollout.spec import PrometheusSpec

log = logging.getLogger("rollout.analysis.prometheus")

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class _NoValue(Exception):
    """The query ran and returned nothing usable (empty vector, NaN, no requests)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Unavailable(ProviderUnavailable):
    """ProviderUnavailable with a kind (timeout, unreachable, http, bad_answer, ...)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def counter_delta(samples: list[tuple[float, float]], window_start: float, scrape_interval_s: float) -> float:
    """Increments of one counter series over its samples in a window: the sum of the
    differences between consecutive scrapes (a drop is a reset: the new value counts from
    0), with no extrapolation to the window's edges. A series whose first sample comes
    later than one scrape interval after the window began did not exist at its start
    (counters appear on their first increment): it counts from 0."""
    if not samples:
        return 0.0
    samples = sorted(samples)
    total = samples[0][1] if samples[0][0] > window_start + scrape_interval_s * 1.5 else 0.0
    for (_, a), (_, b) in zip(samples, samples[1:]):
        total += b - a if b >= a else b
    return total


def _is_timeout(exc: Exception) -> bool:
    """requests reports a read timeout that exhausted urllib3's retries as a ConnectionError
    wrapping MaxRetryError(ReadTimeoutError): look through the wrapping, by type."""
    if isinstance(exc, requests.Timeout):
        return True
    for arg in getattr(exc, "args", ()):
        reason = arg.reason if isinstance(arg, MaxRetryError) else arg
        # NewConnectionError subclasses urllib3's timeout errors: a refused connection is not a timeout.
        if isinstance(reason, (ReadTimeoutError, Urllib3Timeout)) and not isinstance(reason, NewConnectionError):
            return True
    return False


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
    scrape_interval_s: float = 15.0
    min_scrapes: int = 2

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
            scrape_interval_s=spec.scrape_interval_s,
            min_scrapes=spec.min_scrapes,
        )

    # ------------------------------------------------------------------ public

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        """Never raises: an outage or a bad query is a Measurement with status ERROR."""
        secrets: list[str] = []
        # A window shorter than two scrapes holds at most one sample of a counter.
        ctx = replace(ctx, window_s=max(ctx.window_s, self.min_scrapes * self.scrape_interval_s))
        try:
            headers, auth, secrets = self.credentials.resolve()
            if packs.is_pack_ref(query):
                return self._pack(packs.resolve(query), ctx, headers, auth)
            return self._value(self._instant(promql.render(query, ctx), headers, auth))
        except _NoValue as exc:
            return Measurement.no_data(self._scrub(str(exc), secrets), kind=exc.kind)
        except _Unavailable as exc:
            return Measurement.failed(self._scrub(str(exc), secrets), kind=exc.kind)
        except (ProviderUnavailable, SpecError, promql.UnsafeLabelValue, KeyError) as exc:
            return Measurement.failed(self._scrub(str(exc).strip("'\""), secrets), kind="query")

    @staticmethod
    def _value(value: float | None) -> Measurement:
        if value is None:
            return Measurement.no_data("the query returned an empty vector", kind="empty")
        return Measurement.of(value)  # NaN / Inf: no data, saying which

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
            raise _Unavailable(self._scrub(self._describe(exc), secrets), self._kind(exc)) from None
        if not result:
            return []
        if len(result) > 1:
            raise ProviderUnavailable(f"range query returned {len(result)} series; aggregate it to one")
        points = [(float(t), self._number(v)) for t, v in result[0].get("values", [])]
        return [(t, v) for t, v in points if v is not None]  # NaN/Inf points are gaps, never numbers

    # ------------------------------------------------------------------ internals

    def _pack(self, pq: packs.PackQuery, ctx: QueryContext, headers: dict[str, str],
              auth: tuple[str, str] | None) -> Measurement:
        if pq.value is not None:
            return self._value(self._instant(promql.render(pq.value, ctx), headers, auth))
        assert pq.requests_counters and pq.bad_counters
        end = time.time()
        n, span = self._counters(pq.requests_counters, ctx, end, headers, auth)
        where = f"{ctx.model}:{ctx.version} in the last {promql.interval(ctx.window_s)} ({pq.pack} pack)"
        if n is None:
            raise _NoValue(f"no request series for {where}", "empty")
        if n <= 0:
            raise _NoValue(f"zero requests for {where}", "zero_requests")
        # No error series while there were requests means no errors (counters with a
        # label appear only once incremented): 0, not "no data".
        bad = self._counters(pq.bad_counters, ctx, end, headers, auth)[0] or 0.0
        bad = min(max(bad, 0.0), n)
        detail = {"requests": n, pq.bad_key: bad, "bad": bad, "window_s": float(round(ctx.window_s))}
        # The rate is over the time the scrapes span (the counts are not extrapolated to the window).
        value = {"requests": n, "bad": bad, "rate": n / span if span > 0 else n / max(ctx.window_s, 1.0),
                 "ratio": bad / n,
                 "success": 1.0 - bad / n}[pq.derive]
        return Measurement.of(value, detail)

    def _counters(self, counters: tuple[tuple[float, str], ...], ctx: QueryContext, end: float,
                  headers: dict[str, str], auth: tuple[str, str] | None) -> tuple[float | None, float]:
        """(signed sum of the counters' deltas between scrapes over the window ending at ``end``
        - raw samples of a range selector - or None when no series exists at all; the longest
        time a series' samples span)."""
        window = max(1, int(round(ctx.window_s)))
        start = end - window
        total, seen, span = 0.0, False, 0.0
        for sign, selector in counters:
            text = f"{promql.render(selector, ctx)}[{window}s]"
            for series in self._raw(text, end, headers, auth):
                seen = True
                samples = []
                for t, v in series.get("values", []):
                    value = self._number(v)
                    if value is None:
                        raise _NoValue(f"a sample of {selector.split('{')[0]} is NaN", "nan")
                    samples.append((float(t), value))
                total += sign * counter_delta(samples, start, self.scrape_interval_s)
                if samples:
                    span = max(span, max(t for t, _ in samples) - min(t for t, _ in samples))
        return (total if seen else None), span

    @staticmethod
    def _number(raw: object) -> float | None:
        """A sample value as a float; None for NaN/Inf. A value that is not a number at all
        is a bad answer, reported without echoing it (it could hold anything)."""
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _Unavailable("Prometheus answered a sample value that is not a number", "bad_answer") from None
        return None if not math.isfinite(value) else value

    def _raw(self, text: str, at: float, headers: dict[str, str], auth: tuple[str, str] | None) -> list[dict]:
        try:
            self._client.headers, self._client.auth = {**self.headers, **headers}, auth
            result = self._client.custom_query(text, params={"time": f"{at:.3f}"})
        except (requests.RequestException, PrometheusApiClientException) as exc:
            raise _Unavailable(self._describe(exc), self._kind(exc)) from None
        except ValueError:  # a 200 with a body that is not the API's JSON
            raise _Unavailable(f"Prometheus at {self._safe_url()} answered with unreadable JSON", "bad_answer") from None
        if not isinstance(result, list) or any(not isinstance(r, dict) for r in result):
            raise _Unavailable(f"Prometheus at {self._safe_url()} answered a range selector with something that "
                               "is not a matrix", "bad_answer")
        return result

    def _instant(self, text: str, headers: dict[str, str], auth: tuple[str, str] | None) -> float | None:
        """The query's single value; None for an empty vector. NaN/Inf raise _NoValue, an
        outage or a malformed answer _Unavailable."""
        try:
            self._client.headers, self._client.auth = {**self.headers, **headers}, auth
            result = self._client.custom_query(text)
        except (requests.RequestException, PrometheusApiClientException) as exc:
            raise _Unavailable(self._describe(exc), self._kind(exc)) from None
        except ValueError:  # a 200 with a body that is not the API's JSON
            raise _Unavailable(f"Prometheus at {self._safe_url()} answered with unreadable JSON", "bad_answer") from None
        try:
            if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
                raw = result[1]  # a scalar result: [time, "value"]
            elif not result:
                return None
            elif len(result) > 1:
                labels = ", ".join(str(r.get("metric", {})) for r in result[:3])
                raise _Unavailable(f"query returned {len(result)} series ({labels}...); aggregate it to one "
                                   "value with sum(), avg() or max()", "query")
            else:
                raw = result[0]["value"][1]
        except (TypeError, KeyError, IndexError, AttributeError):
            raise _Unavailable(f"Prometheus at {self._safe_url()} answered in an unexpected shape", "bad_answer") from None
        value = self._number(raw)
        if value is None:
            raise _NoValue(f"the query's value was {raw}", "nan")
        return value

    @staticmethod
    def _kind(exc: Exception) -> str:
        if _is_timeout(exc):
            return "timeout"
        if isinstance(exc, requests.ConnectionError):
            return "unreachable"
        if isinstance(exc, PrometheusApiClientException):
            return "http"
        return "error"

    def _safe_url(self) -> str:
        return _USERINFO.sub("", self.url)

    def _describe(self, exc: Exception) -> str:
        if _is_timeout(exc):
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
        """Remove URL user-info and every configured secret (raw, base64 of user:password, URL-encoded)."""
        forms = list(secrets)
        user, password = (os.environ.get(self.credentials.basic_auth_user_env or "", ""),
                          os.environ.get(self.credentials.basic_auth_password_env or "", ""))
        if user or password:
            forms.append(base64.b64encode(f"{user}:{password}".encode()).decode())
        forms += [quote(x, safe="") for x in secrets if x]
        secrets = sorted({f for f in forms if f}, key=len, reverse=True)
        text = _USERINFO.sub("", text)
        for s in secrets:
            if s:
                text = text.replace(s, "***")
        return text
