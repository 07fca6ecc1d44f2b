"""One redaction layer between the engine and every sink: state, logs, stdout, the GitHub
job summary and outputs, notifications.

The redactor knows every configured secret — the values behind a spec's credential slots
(``*_env`` / ``*_file`` fields: Prometheus bearer token, basic auth, secret headers,
webhook and notification URLs, registry tokens) and anything registered at run time —
in every form it can take in text:

- raw, and JSON-escaped (how it looks inside a state file);
- URL-encoded (``quote`` and ``quote_plus``), as in a query string;
- base64 of ``user:password`` (an ``Authorization: Basic`` header) and of the secret alone;
- for a URL: the URL itself, its path and query (a Slack webhook's secret is its path),
  the password of its user-info, ``user:password``.

Independently of what is registered, URL user-info (``scheme://user:pass@host``) is
always cut. Sinks call ``scrub(text)``; the logging integration (``install_logging``)
scrubs every log record, whichever logger made it.

Why one global redactor: a secret read by a provider in one module must be hidden in a
state file written by another; the set of secrets is a property of the process, like
its environment, which is where most of them come from.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words; no credential is this short
# scheme://user:pass@host or scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s@?#]+)@")
# Secret-file slots: *_file fields whose name says they hold a credential (not ca_file, kubeconfig...)
_SECRET_FILE_WORDS = ("token", "password", "secret", "url", "credential", "key", "auth")
_NOT_SECRET_FILE = ("ca_file", "cert_file", "kubeconfig")
# Environment variables that are credentials wherever they appear (registries, CI).
WELL_KNOWN_SECRET_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "GITHUB_TOKEN", "GH_TOKEN",
                         "ROLLOUT_GIT_TOKEN", "GIT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _forms(secret: str) -> set[str]:
    """Every way ``secret`` can appear in text this program writes."""
    out = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    out.add(base64.b64encode(secret.encode()).decode())
    out.add(base64.urlsafe_b64encode(secret.encode()).decode())
    parts = urlsplit(secret) if "://" in secret else None
    if parts is not None and parts.netloc:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(parts.path) > 1:
            out |= {path, parts.path, quote(path, safe="")}
        if parts.query:
            out.add(parts.query)
            out |= {v for _, v in parse_qsl(parts.query) if v}  # ?key=<secret>
        if parts.password:
            out |= _pair_forms(parts.username or "", parts.password)
    return {f for f in out if len(f) >= MIN_SECRET_LEN}


def _pair_forms(user: str, password: str) -> set[str]:
    """Forms of a basic-auth pair: the password, ``user:password`` and its base64."""
    pair = f"{user}:{password}"
    out = {password, pair, quote(password, safe=""), quote_plus(password), json.dumps(password)[1:-1]}
    out.add(base64.b64encode(pair.encode()).decode())
    out.add(base64.b64encode(pair.encode()).decode().rstrip("="))
    return {f for f in out if len(f) >= MIN_SECRET_LEN}


class Redactor:
    """The set of known secrets (in all their forms) and the function that masks them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._json_escaped = False  # a form that JSON writes escaped (a quote, a backslash, a control)

    def add(self, secret: str | None) -> None:
        """Register a secret (a token, password or secret URL) read from anywhere."""
        if not secret:
            return
        value = secret.strip()
        new = set()
        for s in {secret, value}:
            if len(s) >= MIN_SECRET_LEN:
                new |= _forms(s)
        self._extend(new)

    def add_basic_auth(self, user: str | None, password: str | None) -> None:
        """Register a basic-auth pair: the password alone, ``user:password`` and its base64."""
        if password:
            self._extend(_pair_forms(user or "", password))
            self.add(password)
        if user and len(user) >= MIN_SECRET_LEN:
            self.add(user)  # a user name is half a credential; masking it costs a little readability

    def _extend(self, forms: Iterable[str]) -> None:
        with self._lock:
            before = len(self._forms)
            self._forms |= set(forms)
            if len(self._forms) != before:
                ordered = sorted(self._forms, key=len, reverse=True)  # longest first: no partial masks
                self._pattern = re.compile("|".join(re.escape(f) for f in ordered))
                self._json_escaped = any(json.dumps(f, ensure_ascii=False)[1:-1] != f for f in self._forms)

    def clear(self) -> None:
        """Forget every secret (tests)."""
        with self._lock:
            self._forms.clear()
            self._pattern = None
            self._json_escaped = False

    @property
    def known(self) -> int:
        return len(self._forms)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, in every form, and all URL user-info masked."""
        if not text:
            return text
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        if "@" in text:
            text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
        return text

    def may_change(self, json_text: str) -> bool:
        """Whether scrubbing the strings inside ``json_text`` (JSON with non-ASCII written as
        is) could change any of them. Conservative: a secret form JSON would escape, a form
        found anywhere in the text, or anything shaped like URL user-info says yes. A state
        of hundreds of KiB is then written without walking every string of it."""
        with self._lock:
            pattern, escaped = self._pattern, self._json_escaped
        if escaped or (pattern is not None and pattern.search(json_text)):
            return True
        return "@" in json_text and _USERINFO.search(json_text) is not None

    def scrub_data(self, value: Any) -> Any:
        """A JSON-like value with every string in it scrubbed (keys included)."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {self.scrub_data(k): self.scrub_data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_data(v) for v in value]
        return value

    # ------------------------------------------------------------------ from a spec

    def add_spec(self, spec: Any, environ: Mapping[str, str] | None = None) -> None:
        """Register the values behind every credential slot of a spec (a pydantic model or
        its dict): each ``*_env`` field names an environment variable holding a secret (a
        ``*_env`` mapping, e.g. ``headers_env``, maps names to such variables), each
        credential ``*_file`` field a file holding one. Slots are found by name, so a
        section added later (a registry token, a new provider) is covered without a change
        here. A ``*user*_env`` / ``*password*_env`` pair is also registered as basic auth."""
        env = os.environ if environ is None else environ
        data = spec.model_dump(mode="python") if hasattr(spec, "model_dump") else spec
        for name in WELL_KNOWN_SECRET_ENV:
            self.add(env.get(name))
        self._walk(data, env)

    def _walk(self, node: Any, env: Mapping[str, str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._walk(item, env)
            return
        if not isinstance(node, Mapping):
            return
        users: dict[str, str] = {}
        passwords: dict[str, str] = {}
        for key, value in node.items():
            key = str(key)
            if key.endswith("_env") and isinstance(value, str):
                secret = env.get(value)
                self.add(secret)
                if "user" in key and secret:
                    users[key.replace("user", "")] = secret
                elif "password" in key and secret:
                    passwords[key.replace("password", "")] = secret
            elif key.endswith("_env") and isinstance(value, Mapping):
                for var in value.values():
                    if isinstance(var, str):
                        self.add(env.get(var))
            elif key.endswith("_file") and isinstance(value, str) and key not in _NOT_SECRET_FILE \
                    and any(w in key for w in _SECRET_FILE_WORDS):
                self.add(_read_secret_file(value))
            else:
                self._walk(value, env)
        for slot, password in passwords.items():
            self.add_basic_auth(users.get(slot), password)


def _read_secret_file(path: str) -> str | None:
    try:
        p = Path(path).expanduser()
        if p.stat().st_size > 64 * 1024:  # a credential file is small; do not slurp a disk image
            return None
        return p.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


REDACTOR = Redactor()


def scrub(text: str) -> str:
    """Mask every known secret in ``text`` (see ``Redactor.scrub``)."""
    return REDACTOR.scrub(text)


def register(secret: str | None) -> None:
    """Register a secret read at run time (a rotated token file, a resolved URL)."""
    REDACTOR.add(secret)


def register_spec(spec: Any) -> None:
    """Register the secrets behind a spec's credential slots (see ``Redactor.add_spec``),
    and make sure log records are scrubbed from now on."""
    REDACTOR.add_spec(spec)
    install_logging()


# --------------------------------------------------------------------------- logging


class RedactingFilter(logging.Filter):
    """Scrubs a log record's message and formatted exception; attach it to a logger or a
    handler (``install_logging`` covers every logger at once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is the logging module's to report
        return
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = scrub(record.exc_text)


_installed = False
_install_lock = threading.Lock()


def install_logging() -> None:
    """Scrub every log record of this process, whichever logger makes it (``rollout.*``,
    urllib3, requests, kubernetes...): a record factory applies ``RedactingFilter`` as the
    record is made, so loggers created later are covered too. Idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        redactor = RedactingFilter()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redactor.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        logging.getLogger("rollout").addFilter(redactor)
        _installed = True


# --------------------------------------------------------------------------- stored state


def scrubbed_json(model: Any, indent: int | None = 1) -> str:
    """A pydantic model (a rollout state) as JSON with every string scrubbed — values and
    keys, structure kept — for every state store: the file store and the Kubernetes
    ConfigMap store write this instead of ``model_dump_json()``."""
    text = model.model_dump_json(indent=indent)  # pydantic's JSON: NaN -> null, non-ASCII as is
    if not REDACTOR.may_change(text):
        return text
    data = REDACTOR.scrub_data(json.loads(text))
    return json.dumps(data, indent=indent, ensure_ascii=False, separators=(",", ":") if indent is None else None)
