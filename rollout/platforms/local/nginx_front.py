"""The router's compiled fast path: nginx with its Lua module in front of the Python router.

Why: a request relayed by the Python router costs about 0.8 ms of CPU on REST and 1.1 ms
on gRPC (bench/results/router.md), as much as the builtin model server's whole answer, so
on a busy machine the router alone cut throughput to ~0.7x of direct. nginx relays a
request for ~0.1 ms. With ``--data-plane nginx`` the router's public ports are nginx's;
nginx serves live and version-pinned inference itself (the choice is made in
``nginx/rollout_front.lua`` from the same RouterConfig, written into nginx's shared
memory, so a new split takes effect at once with no reload and no dropped connection),
and passes every other request, unchanged, to the Python router on a private port:
health, metadata, preview, mirrored traffic (whose answers are compared in Python),
anything it does not recognise. The Python router stays the one place for the config,
the statistics and the metrics: it drains nginx's per-request records into them.

nginx outlives its router process on purpose: a router that crashes or is killed
leaves nginx serving the last split (inference keeps working; only what needs Python,
health and metadata among it, answers 502 meanwhile), and the router started again on
the same ports adopts that nginx instead of replacing it (``left_behind``): no request
is refused, and the records nginx queued meanwhile are counted. A router stopped on
purpose stops its nginx; so does ``rollout local down`` when the router is already dead
(``stop_left_behind``). nginx's workers die with their master (see rollout_front.lua).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from rollout.platforms.local.proxying import FRONT_CONNECTION_HEADER as CONNECTION_HEADER
from rollout.platforms.local.proxying import FRONT_PEER_HEADER as PEER_HEADER
from rollout.platforms.local.routing import RouterConfig

log = logging.getLogger(__name__)

MODULES = Path("/usr/lib/nginx/modules")
LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
LUA_DIR = Path(__file__).resolve().parent / "nginx"
INSTALL_HINT = "apt-get install nginx libnginx-mod-http-lua lua-cjson"
# Python router's own answer may take backend_timeout_s (or the shadow's) plus its own work.
PYTHON_TIMEOUT_MARGIN_S = 30


def missing() -> str | None:
    """Why nginx cannot be the data plane here, or None if it can."""
    if shutil.which("nginx") is None:
        return f"nginx is not installed ({INSTALL_HINT})"
    absent = [m for m in LUA_MODULES if not (MODULES / m).exists()]
    if absent:
        return f"nginx's Lua module is not installed: no {', '.join(absent)} in {MODULES} ({INSTALL_HINT})"
    if not (LUA_DIR / "rollout_front.lua").exists():
        return f"{LUA_DIR / 'rollout_front.lua'} is missing from the installed package"
    return None


def fast_config(config: RouterConfig) -> dict[str, Any]:
    """What the Lua side needs of a RouterConfig: versions and their plain
    ``host:port`` addresses. A backend that is not plain http://host:port (a path
    prefix, https) is left out, so its requests go through the Python router."""
    rest: dict[str, str] = {}
    for version, url in config.backends.items():
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.hostname and parts.port and parts.path in ("", "/") \
                and not parts.query and not parts.username:
            rest[version] = f"{parts.hostname}:{parts.port}"
    return {"stable": config.stable, "candidate": config.candidate, "weight": config.weight,
            "mirror": config.mirror, "rest": rest, "grpc": dict(config.grpc_backends)}


@dataclass(frozen=True)
class Record:
    """One request nginx served: what ``Router.record`` needs."""

    version: str
    kind: str
    code: int | None  # HTTP code; None: the server could not be reached (502)
    grpc_status: int | None  # the gRPC status, for gRPC requests
    latency_ms: float
    timed_out: bool


def parse_drain(text: str) -> tuple[dict[str, Any], list[Record]]:
    """The drain endpoint's answer: a JSON line of totals, then one record per line."""
    head, _, rest = text.partition("\n")
    meta = json.loads(head)
    records = []
    for line in rest.splitlines():
        version, kind, code, ms, flag = line.split("\t")
        grpc_status = int(code[1:]) if code.startswith("g") else None
        http = None if code == "" or grpc_status is not None else int(code)
        records.append(Record(version, kind, http, grpc_status, float(ms), flag == "t"))
    if not isinstance(meta.get("inflight"), dict):
        meta["inflight"] = {}
    return meta, records


def prefix_for(state_file: Path) -> Path:
    """The nginx prefix (config, pid file, logs, body buffers) of the router whose
    state file this is."""
    return state_file.parent / f"{state_file.stem}.nginx"


def _master_titles(prefix: Path) -> tuple[str, str]:
    """The command line of the nginx master ``NginxFront.start`` runs for ``prefix``: as
    started, and as nginx retitles it once running ("nginx: master process ...")."""
    started = f"nginx -p {prefix} -c {prefix / 'nginx.conf'}"
    return started, f"nginx: master process {started}"


def _is_master_of(pid: int, prefix: Path) -> bool:
    """True if ``pid`` is the live nginx master started for exactly this prefix: not a
    ``tail -f`` of its log, not an nginx of a prefix that merely contains this one."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "nginx":
            return False
        # psutil splits a retitled command line at spaces; joined, it is the title again.
        return " ".join(proc.cmdline()) in _master_titles(prefix)
    except (psutil.Error, OSError, ValueError):  # ValueError: a negative pid from a damaged pid file
        return False


def running_pid(prefix: Path) -> int | None:
    """The pid of the nginx master serving ``prefix``, if one runs. The pid file is tried
    first, and trusted only if its pid is that master; a missing or stale pid file (a
    crash between start and write, a hand edit) falls back to a scan of the processes,
    so an nginx holding our ports is never lost track of."""
    try:
        pid = int((prefix / "nginx.pid").read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and _is_master_of(pid, prefix):
        return pid
    return next((p for p in psutil.pids() if _is_master_of(p, prefix)), None)


def stop_left_behind(prefix: Path, timeout_s: float = 5.0) -> bool:
    """Stop the nginx that serves ``prefix`` (a router that died left it running);
    True if there was one."""
    pid = running_pid(prefix)
    if pid is None:
        return False
    _stop_pid(pid, signal.SIGTERM, timeout_s)
    return True


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` owner-only, atomically. nginx.conf and front.json hold the token
    that lets a request through to the Python router as nginx's own; only the router's
    user (whom nginx and its workers run as) reads them."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a .tmp left by a crash keeps its old mode otherwise
        f.write(text)
    os.replace(tmp, path)


def _stop_pid(pid: int, sig: int, timeout_s: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        _, alive = psutil.wait_procs([proc], timeout=timeout_s)
        for left in alive:
            left.kill()
        psutil.wait_procs(alive, timeout=2.0)
    except psutil.Error:
        pass  # gone already


class NginxFront:
    """One nginx master with one worker, serving ``port`` (REST) and ``grpc_port``
    (V2 gRPC, when given) for one model, with an admin server on ``admin_port``."""

    def __init__(self, prefix: Path, *, port: int, grpc_port: int | None, admin_port: int, python_port: int,
                 python_grpc_port: int | None, backend_timeout_s: float, body_limit_bytes: int) -> None:
        self.prefix = prefix
        self.port, self.grpc_port, self.admin_port = port, grpc_port, admin_port
        self.python_port, self.python_grpc_port = python_port, python_grpc_port
        self.backend_timeout_s = backend_timeout_s
        self.body_limit_bytes = body_limit_bytes
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None  # an nginx a previous router of this prefix started
        self.log_offset = 0  # where this nginx's lines begin in error.log

    ADMIN_TOKEN_HEADER = "X-Rollout-Front-Token"  # the router's token on /config and /drain

    @property
    def admin_headers(self) -> dict[str, str]:
        return {self.ADMIN_TOKEN_HEADER: self.token}

    STATE = "front.json"  # ports and token of the running nginx, for the next router to adopt it

    @classmethod
    def left_behind(cls, prefix: Path, *, port: int, grpc_port: int | None, backend_timeout_s: float,
                    body_limit_bytes: int) -> NginxFront | None:
        """The nginx a previous router of this prefix left running, if it serves exactly
        what this router would start (same public ports, limits, timeouts): adopting it
        keeps every client connection and the split it serves. None otherwise."""
        pid = running_pid(prefix)
        try:
            saved = json.loads((prefix / cls.STATE).read_text())
            front = cls(prefix, port=port, grpc_port=grpc_port, admin_port=int(saved["admin_port"]),
                        python_port=int(saved["python_port"]),
                        python_grpc_port=saved["python_grpc_port"] and int(saved["python_grpc_port"]),
                        backend_timeout_s=backend_timeout_s, body_limit_bytes=body_limit_bytes)
            front.token = str(saved["token"])
            running_conf = (prefix / "nginx.conf").read_text()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if pid is None:
            return None
        if render_conf(front) != running_conf:
            log.info("the nginx (pid %d) a previous router left on %s is replaced, not adopted: it was "
                     "started with other ports, limits or timeouts than this router's", pid, prefix)
            return None
        for name in ("nginx.conf", cls.STATE):  # written by an older router, maybe readable by all
            os.chmod(prefix / name, 0o600)
        front.adopted_pid = pid
        return front

    def _save_state(self) -> None:
        data = json.dumps({"admin_port": self.admin_port, "python_port": self.python_port,
                           "python_grpc_port": self.python_grpc_port, "token": self.token})
        _write_private(self.prefix / self.STATE, data)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        """Write the configuration, check it, start nginx (after stopping one a previous
        router of this prefix left behind, which holds our ports)."""
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        stop_left_behind(self.prefix)
        self.adopted_pid = None
        with contextlib.suppress(OSError):
            self.log_offset = (self.prefix / "error.log").stat().st_size
        conf = self.prefix / "nginx.conf"
        _write_private(conf, render_conf(self))
        self._save_state()
        log = open(self.prefix / "nginx.out", "ab")
        try:
            check = subprocess.run(["nginx", "-t", "-q", "-p", str(self.prefix), "-c", str(conf)],
                                   stdout=log, stderr=subprocess.PIPE, timeout=30)
            if check.returncode != 0:
                raise RuntimeError(f"nginx refused {conf}: {check.stderr.decode(errors='replace').strip()}")
            # Not tied to the router's life, and in a session of its own, so that neither a
            # kill of the router nor of its process group takes it (the module's docstring).
            self.proc = subprocess.Popen(["nginx", "-p", str(self.prefix), "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.adopted_pid

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.adopted_pid is not None and _is_master_of(self.adopted_pid, self.prefix)

    def error_tail(self, lines: int = 5) -> str:
        """The last lines this nginx wrote to its error log, and how it ended if it did:
        what an earlier nginx of the prefix wrote is not quoted as this one's reason."""
        try:
            with open(self.prefix / "error.log", "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        said = "\n".join(text.splitlines()[-lines:]) or "nothing in its error log"
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return said
        try:
            how = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        except ValueError:  # a signal with no name (a real-time one)
            how = f"killed by signal {-code}"
        return f"{how}; {said}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful (SIGQUIT: requests in flight finish), then SIGKILL after ``timeout_s``."""
        if self.proc is not None:
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.alive():
            assert self.adopted_pid is not None
            _stop_pid(self.adopted_pid, signal.SIGQUIT, timeout_s)


def _user_line() -> str:
    """Workers run as the router's own user. nginx started by root would otherwise run
    them as nobody, who cannot write request bodies into a state home under /root."""
    if os.geteuid() != 0:
        return ""  # nginx runs its workers as the user it was started as
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"


_COMMON_PROXY = """
      proxy_http_version 1.1;
      proxy_set_header Connection "";"""


def render_conf(front: NginxFront) -> str:
    """The whole nginx.conf: static for the router's life (ports, limits, timeouts);
    what changes (the split) lives in shared memory."""
    p = front.prefix
    backend_s = max(1, int(round(front.backend_timeout_s)))
    python_s = backend_s + PYTHON_TIMEOUT_MARGIN_S
    to_python = f"""{_COMMON_PROXY}
      proxy_set_header Host $http_host;
      proxy_set_header {PEER_HEADER} "{front.token} $remote_addr";
      proxy_set_header {CONNECTION_HEADER} $http_connection;
      proxy_read_timeout {python_s}s;
      proxy_send_timeout {python_s}s;
      # As on the fast path: resent only when a pooled connection failed before any
      # answer (nginx grants only a cached connection the extra try: one server here). A
      # router process that died leaves such connections in the pool for a moment.
      proxy_next_upstream error non_idempotent;
      # The router process not answering: a live request it would have mirrored is served
      # unmirrored (rollout_front.lua, unmirrored); named, so it keeps its method and body.
      error_page 400 413 414 494 500 504 /_rollout/error;
      error_page 502 = @python_502;
      proxy_pass http://rollout_python;"""
    # error + non_idempotent: nginx resends a request only when its pooled connection
    # failed before any answer (it grants cached connections an extra try); the single try
    # the balancer gives makes a fresh connection's failure final.
    fast_proxy = f"""{_COMMON_PROXY}
      proxy_set_header Host $rollout_host;
      proxy_read_timeout {backend_s}s;
      proxy_send_timeout {backend_s}s;
      proxy_next_upstream error non_idempotent;
      proxy_next_upstream_tries 3;
      error_page 502 = @fast_502;
      error_page 504 = @fast_504;
      error_page 413 = @fast_413;
      proxy_pass http://rollout_rest;"""
    # As to_python: pooled connections that failed before any answer are retried, and a
    # router process that does not answer hands mirrored live traffic to unmirrored().
    to_python_grpc = """
      grpc_next_upstream error non_idempotent;
      error_page 400 413 414 494 500 504 /_rollout/error;
      error_page 502 = @python_grpc_502;
      grpc_pass grpc://rollout_python_grpc;"""
    grpc = ""
    if front.grpc_port is not None and front.python_grpc_port is not None:
        grpc = f"""
  upstream rollout_grpc {{
    server 0.0.0.1:1;
    balancer_by_lua_block {{ front.balance() }}
    keepalive 128;
    keepalive_timeout 4s;
  }}
  upstream rollout_python_grpc {{ server 127.0.0.1:{front.python_grpc_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{front.grpc_port} http2;
    set $rollout_grpc "1";
    header_filter_by_lua_block {{ front.header_filter() }}
    log_by_lua_block {{ front.log() }}
    error_page 400 413 414 494 500 502 504 /_rollout/error;
    grpc_read_timeout {python_s}s;
    grpc_send_timeout {python_s}s;
    location = /inference.GRPCInferenceService/ModelInfer {{
      access_by_lua_block {{ front.grpc_access() }}
      grpc_read_timeout {backend_s}s;
      grpc_send_timeout {backend_s}s;
      grpc_next_upstream error non_idempotent;
      grpc_next_upstream_tries 3;
      # A version that refused the connection: the call goes to the other version of the
      # split (rollout_front.lua, failover); named, so it keeps its body.
      error_page 400 413 414 494 500 504 /_rollout/error;
      error_page 502 = @grpc_502;
      grpc_pass grpc://rollout_grpc;
    }}
    location / {{{to_python_grpc}
    }}
    location @python_grpc {{{to_python_grpc}
    }}
    location @python_grpc_502 {{ content_by_lua_block {{ front.own_error(502) }} }}
    location @grpc_502 {{ content_by_lua_block {{ front.own_error(502) }} }}
    # A resend to the address in $rollout_failover: a failover, or a call the dead router
    # process would have mirrored, served unmirrored. Its own 502 is final: own_error
    # answers it (the server's error_page) and resends nothing twice.
    location @grpc_resend {{
      grpc_read_timeout {backend_s}s;
      grpc_send_timeout {backend_s}s;
      grpc_next_upstream error non_idempotent;
      grpc_pass grpc://rollout_grpc;
    }}
    location = /_rollout/error {{ internal; content_by_lua_block {{ front.own_error() }} }}
  }}"""
    return f"""# Written by rollout's router (rollout/platforms/local/nginx_front.py); rewritten at each start.
load_module {MODULES / LUA_MODULES[0]};
load_module {MODULES / LUA_MODULES[1]};
{_user_line()}worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server_tokens off;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  lua_package_path "{LUA_DIR}/?.lua;;";
  lua_shared_dict rollout 64m;
  init_by_lua_block {{ front = require("rollout_front") }}
  init_worker_by_lua_block {{ front.init_worker() }}
  uninitialized_variable_warn off;
  client_max_body_size {front.body_limit_bytes};
  client_body_buffer_size 1m;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  merge_slashes off;
  # Answers pass as the server sent them: its Server and Date, no X-Accel-* acted upon,
  # no Location rewritten, no error page of nginx's instead of the server's own.
  proxy_pass_header Server;
  proxy_pass_header Date;
  proxy_ignore_headers X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate X-Accel-Buffering X-Accel-Charset;
  proxy_pass_header X-Accel-Redirect;
  proxy_pass_header X-Accel-Expires;
  proxy_pass_header X-Accel-Limit-Rate;
  proxy_pass_header X-Accel-Buffering;
  proxy_pass_header X-Accel-Charset;
  proxy_redirect off;
  proxy_intercept_errors off;
  proxy_connect_timeout 5s;
  grpc_connect_timeout 5s;
  # A failover's own failure (the other version is gone too) must reach own_error as well,
  # not nginx's HTML page: nginx applies error_page once per request unless this is on.
  # No loop: own_error resends at most once ($rollout_failover), and nginx caps redirects.
  recursive_error_pages on;

  upstream rollout_rest {{
    server 0.0.0.1:1;
    balancer_by_lua_block {{ front.balance() }}
    keepalive 128;
    keepalive_timeout 4s;
    keepalive_requests 1000000;
  }}
  upstream rollout_python {{ server 127.0.0.1:{front.python_port}; keepalive 32; keepalive_requests 1000000; }}

  server {{
    listen 127.0.0.1:{front.port};
    set $rollout_grpc "";
    header_filter_by_lua_block {{ front.header_filter() }}
    log_by_lua_block {{ front.log() }}
    error_page 400 413 414 494 500 502 504 /_rollout/error;

    location ~ "^/v2/models/[^/]+/(versions/[^/]+/)?infer$" {{
      access_by_lua_block {{ front.rest_access() }}{fast_proxy}
    }}
    location @failover {{{fast_proxy}
    }}
    # Named, so a failover resends the request as it came (a URI error page would make it
    # a GET of the error page's URI); "=": the status is the one these locations give.
    location @fast_502 {{ default_type application/json; content_by_lua_block {{ front.own_error(502) }} }}
    location @fast_504 {{ default_type application/json; content_by_lua_block {{ front.own_error(504) }} }}
    location @fast_413 {{ default_type application/json; content_by_lua_block {{ front.own_error(413) }} }}
    location @python_502 {{ default_type application/json; content_by_lua_block {{ front.own_error(502) }} }}
    location / {{{to_python}
    }}
    location @python {{{to_python}
    }}
    # By URI, not a named location: errors in the request line have no URI to redirect from.
    location = /_rollout/error {{
      internal;
      default_type application/json;
      content_by_lua_block {{ front.own_error() }}
    }}
  }}
{grpc}
  server {{
    listen 127.0.0.1:{front.admin_port};
    # Declares the variables the Lua side sets per request. Not set at server level:
    # that would run again on an internal redirect (an error page) and wipe them.
    location = /_rollout/declare {{
      internal;
      set $rollout_version "";
      set $rollout_kind "";
      set $rollout_t0 "";
      set $rollout_host "";
      set $rollout_other "";
      set $rollout_failover "";
      set $rollout_mirrored "";
      return 404;
    }}
    location = /config {{ set $rollout_admin_token "{front.token}"; content_by_lua_block {{ front.put_config() }} }}
    location = /drain {{ set $rollout_admin_token "{front.token}"; content_by_lua_block {{ front.drain() }} }}
    location = /health {{ return 200 "ok"; }}
  }}
}}
"""
