"""The proxy's rules as pure functions: which paths pass, what kind a request is, which
version a path pins, which headers are hop-by-hop."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from rollout.platforms.local.proxying import (
    NOT_FORWARDED_REQUEST, PathRefused, add_forwarded, check_path, end_to_end, route,
)

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(10)]


@pytest.mark.parametrize(("method", "path", "kind", "pinned"), [
    ("POST", "/v2/models/iris/infer", "live", None),
    ("POST", "/v2/models/iris/infer?x=1", "live", None),
    ("POST", "/v2/models/iris/versions/v2/infer", "pinned", "v2"),
    ("POST", "/v2/models/iris/versions/v%202/infer", "pinned", "v 2"),
    ("POST", "/v2/models/iris/generate", "live", None),
    ("GET", "/v2/models/iris/infer", "other", None),
    ("GET", "/v2/models/iris", "metadata", None),
    ("GET", "/v2/models/iris/versions/v1", "metadata", "v1"),
    ("GET", "/v2/models/iris/ready", "health", None),
    ("GET", "/v2/models/iris/versions/v1/ready", "health", "v1"),
    ("GET", "/v2/health/live", "health", None),
    ("GET", "/v2", "metadata", None),
    ("GET", "/v2/", "metadata", None),
    ("POST", "/v2/repository/index", "other", None),
])
def test_each_path_is_classified_and_pins_its_version(method: str, path: str, kind: str, pinned: str | None) -> None:
    check_path(path)
    got = route(method, path)
    assert (got.kind, got.pinned, got.target) == (kind, pinned, path)


@pytest.mark.parametrize(("path", "status"), [
    ("/v3/x", 404), ("/v2x", 404), ("/", 404), ("/v2/../x", 400), ("/v2/%2e%2E/x", 400),
    ("/v2/a%2F..%2Fb", 400), ("/v2/a%5C..%5Cb", 400), ("/v2/./x", 400),
])
def test_paths_outside_v2_or_with_dot_segments_are_refused(path: str, status: int) -> None:
    with pytest.raises(PathRefused) as refused:
        check_path(path)
    assert refused.value.status == status


@pytest.mark.parametrize("path", ["/v2/a%3Fb", "/v2/a%2Fb", "/v2/..a/b.", "/v2/x?p=../..", "/v2/%FF%FE"])
def test_other_odd_paths_pass_untouched(path: str) -> None:
    check_path(path)
    assert route("GET", path).target == path


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped() -> None:
    raw = [(b"Connection", b"close, X-A"), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-B", b"3"), (b"Host", b"h"),
           (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"), (b"Content-Length", b"9")]
    assert list(end_to_end(raw, NOT_FORWARDED_REQUEST).items()) == [("X-B", "2"), ("X-B", "3")]


def test_forwarded_appends_this_hop_to_earlier_ones() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Forwarded", "for=10.0.0.1"), ("X-Forwarded-For", "10.0.0.1")])
    add_forwarded(headers, "127.0.0.1", 'ho"st', "http")
    assert headers["Forwarded"] == 'for=10.0.0.1, for=127.0.0.1;proto=http;host="ho\\"st"'
    assert headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
