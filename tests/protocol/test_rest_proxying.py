"""What the router does to a request and its answer: nothing but what RFC 9110 asks of
a proxy. Checked against a backend that records the bytes it received."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.supervisor import ProcessRecord
from tests.protocol.conftest import DATA_PLANES
from tests.protocol.recorder import GZIPPED, Recorder

pytestmark = [pytest.mark.protocol, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    r = Recorder().start()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=DATA_PLANES)
def router(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           recorder: Recorder) -> Iterator[ProcessRecord]:
    record = sv.start_router(tmp_path_factory.mktemp("proxy"), "iris", 0,
                             options={"body_limit_bytes": 65536, "backend_timeout_s": 10,
                                      "data_plane": request.param})
    try:
        resp = requests.put(record.url + "/router/config", timeout=5,
                            json={"backends": {"v1": recorder.url}, "stable": "v1"})
        assert resp.status_code == 200, resp.text
        yield record
    finally:
        sv.stop(record, 2.0)


def raw(router: ProcessRecord, method: str, path: str, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None) -> http.client.HTTPResponse:
    """One request with exactly these headers (http.client adds only Host and, with a
    body, Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers:
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_method_raw_path_query_body_and_end_to_end_headers_reach_the_backend_unchanged(
    router: ProcessRecord, recorder: Recorder
) -> None:
    path = "/v2/models/a%3Fb/x%2Fy/infer?q=%20sp%2Face&q=2&&empty=&%E2%9C%93"
    body = bytes(range(256)) * 3
    headers = [("X-Team", "fraud"), ("X-Multi", "one"), ("X-Multi", "two"), ("User-Agent", "my-client/1.0"),
               ("Authorization", "Bearer t0k"), ("Cookie", "s=1"), ("X-Forwarded-For", "10.0.0.9"),
               ("Connection", "keep-alive, X-Hop"), ("X-Hop", "drop me"), ("Keep-Alive", "timeout=5"),
               ("TE", "trailers"), ("Proxy-Authorization", "Basic eA==")]

    resp = raw(router, "PATCH", path, headers, body)

    assert resp.status == 207
    seen = recorder.last()
    assert (seen.method, seen.raw_path, seen.body) == ("PATCH", path, body)
    for name, values in (("X-Team", ["fraud"]), ("X-Multi", ["one", "two"]), ("User-Agent", ["my-client/1.0"]),
                         ("Authorization", ["Bearer t0k"]), ("Cookie", ["s=1"])):
        assert seen.header(name) == values
    for hop in ("X-Hop", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert seen.header(hop) == [], hop
    # Nothing the client did not send: no content negotiation of the router's own.
    for added in ("Content-Type", "Accept", "Accept-Encoding"):
        assert seen.header(added) == [], added
    assert seen.header("X-Forwarded-For") == ["10.0.0.9, 127.0.0.1"]
    assert seen.header("Forwarded")[0].startswith("for=127.0.0.1;proto=http")


def test_every_end_to_end_answer_header_comes_back(router: ProcessRecord) -> None:
    resp = raw(router, "POST", "/v2/models/iris/infer", [("Content-Type", "application/json")], b"{}")

    assert (resp.status, resp.reason) == (207, "Multi Things")
    got = resp.getheaders()
    for name, value in (("Inference-Header-Content-Length", "7"), ("Allow", "GET, POST"), ("Retry-After", "3"),
                        ("Location", "/v2/models/iris"), ("ce-id", "42"), ("ce-type", "io.seldon.inference"),
                        ("X-Backend", "recorder"), ("Content-Type", "application/x-made-up"),
                        ("x-rollout-version", "v1")):
        assert (name, value) in got, name
    assert [v for k, v in got if k == "Set-Cookie"] == ["a=1", "b=2"]


def test_a_head_answer_keeps_the_length_the_get_would_have(router: ProcessRecord, recorder: Recorder) -> None:
    """RFC 9110 9.3.2: HEAD answers the GET's Content-Length with no body; clients size
    downloads and check health with it."""
    direct = raw(recorder, "HEAD", "/v2/health/ready")  # type: ignore[arg-type]
    routed = raw(router, "HEAD", "/v2/health/ready")

    assert direct.getheader("Content-Length") == str(len(b'{"ok":1}'))
    assert (routed.status, routed.getheader("Content-Length")) == (207, direct.getheader("Content-Length"))
    assert recorder.last().method == "HEAD"


def test_a_compressed_answer_passes_through_still_compressed(router: ProcessRecord) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.request("GET", "/v2/gzip", headers={"Accept-Encoding": "gzip"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.getheader("Content-Encoding") == "gzip"
    assert body == GZIPPED


def test_a_gzip_request_body_is_forwarded_as_the_client_encoded_it(router: ProcessRecord, recorder: Recorder) -> None:
    raw(router, "POST", "/v2/models/iris/infer", [("Content-Encoding", "gzip")], GZIPPED)
    assert recorder.last().body == GZIPPED and recorder.last().header("Content-Encoding") == ["gzip"]


def test_redirects_are_returned_not_followed(router: ProcessRecord, recorder: Recorder) -> None:
    before = len(recorder.seen)
    resp = raw(router, "GET", "/v2/redirect")
    assert resp.status == 302 and resp.getheader("Location") == "/v2/elsewhere"
    assert [s.raw_path for s in recorder.seen[before:]] == ["/v2/redirect"]


@pytest.mark.parametrize("path", [
    "/v2/models/%2E%2E/%2E%2E/router/config",
    "/v2/models%2F..%2F..%2Frouter%2Fconfig",
    "/v2/models/iris/..%2F..%2F..%2Fmetrics",
    "/v2/../router/config",
    "/v2/models/%2e/infer",
    "/v2/models/..%5C..%5Cx",
])
def test_dot_segments_are_refused_and_never_reach_the_backend(router: ProcessRecord, recorder: Recorder,
                                                              path: str) -> None:
    before = len(recorder.seen)
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.request("GET", path)  # http.client sends the path as is (requests would normalise it)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 400 and b'"error"' in body and b"dot segment" in body
    assert recorder.seen[before:] == []


@pytest.mark.parametrize("path", ["/metricsx", "/v3/models/iris/infer", "/v2x", "/"])
def test_paths_outside_v2_get_the_routers_json_404(router: ProcessRecord, recorder: Recorder, path: str) -> None:
    before = len(recorder.seen)
    resp = requests.get(router.url + path, timeout=5)
    assert resp.status_code == 404 and resp.headers["Content-Type"].startswith("application/json")
    assert "error" in resp.json()
    assert recorder.seen[before:] == []


def test_long_paths_pass_byte_for_byte_or_are_refused(router: ProcessRecord, recorder: Recorder) -> None:
    fits = "/v2/models/" + "%41" * 1000 + "/infer?" + "k=v&" * 200
    assert raw(router, "POST", fits, body=b"{}").status == 207
    assert recorder.last().raw_path == fits

    before = len(recorder.seen)
    too_long = "/v2/models/" + "a" * 20000 + "/infer"
    assert raw(router, "POST", too_long, body=b"{}").status in (400, 414)
    assert recorder.seen[before:] == []


def test_a_body_over_the_limit_is_413_in_the_protocols_error_shape(router: ProcessRecord, recorder: Recorder) -> None:
    before = len(recorder.seen)
    resp = requests.post(router.url + "/v2/models/iris/infer", data=b"x" * 70000, timeout=5)
    assert resp.status_code == 413 and "body_limit_bytes" in resp.json()["error"]
    assert recorder.seen[before:] == []


# Each retry rule holds for a path the router relays itself and for inference, which
# the nginx front serves on its own; the recorder's action comes in a header.
ACTION_PATHS = ["/v2/x", "/v2/models/iris/infer"]


def action(router: ProcessRecord, path: str, name: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(router.url + path, data=b"{}", headers={"x-recorder": name}, timeout=5)


@pytest.mark.parametrize("path", ACTION_PATHS)
def test_a_reused_connection_reset_before_any_answer_is_resent_once(router: ProcessRecord, recorder: Recorder,
                                                                    path: str) -> None:
    """The backend drops a pooled connection as the next request arrives on it (the
    keep-alive race); that request, even a POST, is resent on a fresh connection."""
    session = requests.Session()
    statuses = []
    for i in range(20):
        statuses.append(action(router, path, "poison", session).status_code)
        before = len(recorder.seen)
        statuses.append(session.post(router.url + path, data=f"{i}".encode(), timeout=5).status_code)
        assert [s.body for s in recorder.seen[before:]] in ([f"{i}".encode()], [f"{i}".encode()] * 2)
    assert statuses == [207] * 40


@pytest.mark.parametrize("path", ACTION_PATHS)
def test_nothing_else_is_retried(router: ProcessRecord, recorder: Recorder, path: str) -> None:
    action(router, path, "warm")  # the router now has a pooled connection
    before = len(recorder.seen)
    resp = action(router, path, "reset")
    # Sent on the pooled connection, reset: resent once on a fresh one, reset again:
    # a fresh connection's failure is not the keep-alive race, so no third try.
    assert resp.status_code == 502 and "unreachable" in resp.json()["error"]
    assert [s.raw_path for s in recorder.seen[before:]] == [path, path]

    action(router, path, "warm")
    before = len(recorder.seen)
    errors = stats_of(router)["connection_errors"]
    try:
        resp = action(router, path, "cut")
        assert resp.status_code == 502 and "unreachable" in resp.json()["error"]
    except requests.exceptions.ChunkedEncodingError:
        # The nginx front passes an answer on as it arrives: the client sees it break
        # where the server broke it, instead of the Python router's 502.
        assert path == "/v2/models/iris/infer" and router_plane(router) == "nginx"
    assert [s.raw_path for s in recorder.seen[before:]] == [path]  # part of an answer came: never resent
    assert stats_of(router)["connection_errors"] == errors + (path == "/v2/models/iris/infer")


def stats_of(router: ProcessRecord) -> dict[str, Any]:
    return dict(requests.get(router.url + "/router/stats", timeout=5).json()["versions"].get("v1") or
                {"connection_errors": 0})


def router_plane(router: ProcessRecord) -> str:
    return str(requests.get(router.url + "/router/stats", timeout=5).json()["data_plane"])


def test_inference_headers_pass_as_on_any_path(router: ProcessRecord, recorder: Recorder) -> None:
    """The inference path (the nginx front's own) forwards exactly as the others do."""
    headers = [("X-Team", "fraud"), ("X-Multi", "one"), ("X-Multi", "two"), ("Authorization", "Bearer t0k"),
               ("X-Forwarded-For", "10.0.0.9"), ("Forwarded", "for=10.0.0.9"), ("Connection", "keep-alive"),
               ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Proxy-Authorization", "Basic eA=="),
               ("Content-Type", "application/json")]
    resp = raw(router, "POST", "/v2/models/iris/infer?x=%41", headers, b'{"inputs": []}')
    assert resp.status == 207 and resp.getheader("x-rollout-version") == "v1"
    seen = recorder.last()
    assert (seen.method, seen.raw_path, seen.body) == ("POST", "/v2/models/iris/infer?x=%41", b'{"inputs": []}')
    for name, values in (("X-Team", ["fraud"]), ("X-Multi", ["one", "two"]), ("Authorization", ["Bearer t0k"]),
                         ("Content-Type", ["application/json"])):
        assert seen.header(name) == values, name
    for hop in ("Keep-Alive", "TE", "Proxy-Authorization"):
        assert seen.header(hop) == [], hop
    assert seen.header("X-Forwarded-For") == ["10.0.0.9, 127.0.0.1"]
    assert seen.header("Forwarded") == [f'for=10.0.0.9, for=127.0.0.1;proto=http;host="127.0.0.1:{router.port}"']


def test_a_version_the_router_does_not_serve_is_answered_by_stables_server(
    router: ProcessRecord, recorder: Recorder
) -> None:
    """The model server's own answer (its 404, or its 422 for a bad body), as directly."""
    resp = requests.post(router.url + "/v2/models/iris/versions/v9/infer", json={}, timeout=5)
    assert resp.status_code == 207 and recorder.last().raw_path == "/v2/models/iris/versions/v9/infer"
    assert resp.headers["x-rollout-version"] == "v1"


def test_the_routers_own_errors_are_json(router: ProcessRecord, recorder: Recorder) -> None:
    preview = requests.post(router.url + "/preview/v2/models/iris/infer", json={}, timeout=5)
    assert preview.status_code == 503 and "no candidate" in preview.json()["error"]


def test_an_aborted_upload_leaves_one_line_not_a_traceback(router: ProcessRecord) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.putrequest("POST", "/v2/models/iris/infer")
    conn.putheader("Content-Length", "100000")
    conn.endheaders(b"x" * 10)
    conn.close()  # gone halfway through its body
    assert requests.get(router.url + "/router/health", timeout=5).status_code == 200
    log = Path(router.log_file).read_text()
    assert "Traceback" not in log


@pytest.mark.parametrize("method,path", [("GET", "/v2/x"), ("POST", "/v2/models/iris/infer")])
def test_the_fronts_private_headers_sent_by_a_client_are_neither_trusted_nor_forwarded(
    router: ProcessRecord, recorder: Recorder, method: str, path: str
) -> None:
    """x-rollout-peer and x-rollout-connection carry the client's address and Connection
    from the nginx front to the router process; a client forging them changes nothing."""
    raw(router, method, path, [("X-Rollout-Peer", "0123 6.6.6.6"), ("X-Rollout-Connection", "X-Team"),
                               ("X-Team", "fraud")], b"{}" if method == "POST" else None)
    seen = recorder.last()
    assert seen.raw_path == path
    assert seen.header("X-Rollout-Peer") == [] and seen.header("X-Rollout-Connection") == []
    assert seen.header("X-Team") == ["fraud"]  # not dropped as if the client had named it in Connection
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
