"""What the router does to a request and an answer on the way through, as pure functions.

Kept apart from the server so the rules a reviewer checks against RFC 9110 and the Open
Inference Protocol are in one small place: which paths may pass, what kind of request
a path is, which version a path pins, which headers are hop-by-hop.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote

from multidict import CIMultiDict

from rollout.platforms.local.stats import HEALTH, LIVE, METADATA, OTHER, PINNED

# RFC 9110 7.6.1 and 9112: meaningful for one connection only, never forwarded. Plus
# Content-Length (the router sends the body it read and recomputes it), Host (the
# backend's, the client's goes into Forwarded) and Expect (the router already read the
# body, a backend must not make it wait for 100-continue).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Set by the router's nginx front (nginx_front) on requests it passes to the Python
# router: the client's address behind a per-start token, and the client's Connection
# header, which nginx consumes. Never forwarded to a backend, whoever sent them.
FRONT_PEER_HEADER = "x-rollout-peer"
FRONT_CONNECTION_HEADER = "x-rollout-connection"
NOT_FORWARDED_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect", FRONT_PEER_HEADER, FRONT_CONNECTION_HEADER}
NOT_FORWARDED_RESPONSE = HOP_BY_HOP | {"content-length"}

_MODEL_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/.*)?")
INFERENCE_ENDINGS = ("/infer", "/generate", "/generate_stream")


class PathRefused(ValueError):
    """A path the router will not forward (answered 400/404 by the router itself)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Route:
    """Where one request goes: its kind, the version it pins (if any), and the raw
    path and query to send to the backend, byte for byte as the client sent them."""

    kind: str
    pinned: str | None
    target: str  # raw path + query, never decoded


def check_path(raw_path: str) -> None:
    """Refuse any path that could reach outside ``/v2`` on a backend: a dot segment,
    literal or percent-encoded, including ones hidden behind an encoded slash
    (``%2F..%2F``). Everything else passes untouched, so an encoded ``?`` or ``/``
    reaches the backend as the same bytes and the backend decides."""
    path = raw_path.split("?", 1)[0]
    if path != "/v2" and not path.startswith("/v2/"):
        raise PathRefused(404, f"no route for {path[:200]!r}: this router serves /v2 and /v2/...")
    check_dots(path)


def check_dots(raw_path: str) -> None:
    """PathRefused (400) if any segment of the path is a dot segment, once decoded."""
    path = raw_path.split("?", 1)[0]
    for segment in path.split("/"):
        decoded = unquote(segment, errors="replace") if "%" in segment else segment
        for part in re.split(r"[/\\]", decoded):
            if part in (".", ".."):
                raise PathRefused(400, f"path {path[:200]!r} has a dot segment; the router refuses it "
                                  "rather than let it reach outside /v2")


def route(method: str, raw_path: str) -> Route:
    """Classify a checked raw path (with its query) into a Route."""
    path = raw_path.split("?", 1)[0]
    match = _MODEL_PATH.fullmatch(path)
    if path.startswith("/v2/health/"):
        return Route(HEALTH, None, raw_path)
    if path in ("/v2", "/v2/"):
        return Route(METADATA, None, raw_path)
    if match is None:
        return Route(OTHER, None, raw_path)
    version = unquote(match["version"]) if match["version"] is not None else None
    rest = match["rest"] or ""
    if method == "POST" and rest.endswith(INFERENCE_ENDINGS):
        kind = PINNED if version is not None else LIVE
    elif rest in ("", "/"):
        kind = METADATA
    elif rest == "/ready":
        kind = HEALTH
    else:
        kind = OTHER
    return Route(kind, version, raw_path)


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in Connection: hop-by-hop for this message (RFC 9110 7.6.1)."""
    return {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}


def end_to_end(raw_headers: Iterable[tuple[bytes, bytes]], drop: frozenset[str]) -> CIMultiDict[str]:
    """Every header except ``drop`` and those named in Connection, in order, repeats kept."""
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers]
    named = connection_tokens(pairs)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in pairs:
        low = k.lower()
        if low not in drop and low not in named:
            out.add(k, v)
    return out


def from_front(
    raw_headers: Iterable[tuple[bytes, bytes]], token: str | None,
) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """A request's headers as the client sent them to the nginx front, and the client's
    address; with no valid token (not from our front), both front headers are dropped
    and the address is None (the socket's peer counts)."""
    out: list[tuple[bytes, bytes]] = []
    peer: str | None = None
    connection: list[tuple[bytes, bytes]] = []
    for k, v in raw_headers:
        low = k.lower()
        if low == FRONT_PEER_HEADER.encode():
            given, _, addr = v.decode("latin-1").partition(" ")
            if token is not None and hmac.compare_digest(given, token):
                peer = addr
        elif low == FRONT_CONNECTION_HEADER.encode():
            connection.append((b"Connection", v))
        else:
            out.append((k, v))
    return (out + connection if peer is not None else out), peer


def add_forwarded(headers: CIMultiDict[str], peer: str | None, host: str | None, scheme: str) -> None:
    """Append this hop to Forwarded (RFC 7239) and X-Forwarded-For, keeping earlier hops."""
    peer = peer or "unknown"
    node = f'"[{peer}]"' if ":" in peer else peer
    quoted = (host or "").replace("\\", "\\\\").replace('"', '\\"')  # RFC 7230 quoted-string
    element = f"for={node};proto={scheme}" + (f';host="{quoted}"' if host else "")
    earlier = headers.getall("Forwarded", [])
    headers.popall("Forwarded", None)
    headers["Forwarded"] = ", ".join([*earlier, element])
    xff = headers.getall("X-Forwarded-For", [])
    headers.popall("X-Forwarded-For", None)
    headers["X-Forwarded-For"] = ", ".join([*xff, peer])
