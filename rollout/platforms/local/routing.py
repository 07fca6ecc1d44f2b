"""The router's configuration: what it is, how it is validated, where it is kept.

Kept apart from the aiohttp server so the platform (which writes it) and the router
(which serves it) share one definition and one validator, and so a restarted router
comes back with the split it had: the config is written atomically to a state file on
every change.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FLOAT_RTOL = 1e-6
DEFAULT_FLOAT_ATOL = 1e-12
VERSION_HEADER = "x-rollout-version"  # on every response: the version that answered
PREVIEW_PREFIX = "/preview"  # <router>/preview/v2/... always reaches the candidate
CONFIG_KEYS = ("backends", "grpc_backends", "stable", "candidate", "weight", "mirror", "float_rtol", "float_atol")
_GRPC_TARGET = re.compile(r"[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}")


class ConfigError(ValueError):
    """A config the router refuses; ``field`` names the offending key."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


@dataclass(frozen=True)
class RouterConfig:
    """The whole routing decision. Frozen and swapped as one object, so a request
    reads one consistent config for its whole life, whatever PUTs happen meanwhile."""

    backends: dict[str, str] = field(default_factory=dict)  # version -> base URL
    grpc_backends: dict[str, str] = field(default_factory=dict)  # version -> host:port of its V2 gRPC server
    stable: str | None = None
    candidate: str | None = None
    weight: int = 0  # candidate's share of live traffic, percent
    mirror: int = 0  # percent of stable-routed requests copied to the candidate
    float_rtol: float = DEFAULT_FLOAT_RTOL
    float_atol: float = DEFAULT_FLOAT_ATOL

    def choose(self, rnd: random.Random | None = None) -> str | None:
        """The version that serves one live request (None if nothing is routed)."""
        r = (rnd or random).random() * 100.0
        if self.candidate is not None and r < self.weight:
            return self.candidate
        return self.stable

    def should_mirror(self, rnd: random.Random | None = None) -> bool:
        return self.candidate is not None and self.mirror > 0 and (rnd or random).random() * 100.0 < self.mirror

    def weights(self) -> dict[str, int]:
        """Live share per configured version (stable gets 100 - weight)."""
        out = {v: 0 for v in self.backends}
        if self.stable is not None:
            out[self.stable] = 100 - (self.weight if self.candidate else 0)
        if self.candidate is not None:
            out[self.candidate] = self.weight
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    """A finite JSON number: Python's json module accepts NaN and Infinity literals,
    which compare false with everything and would slip through range checks."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _percent(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if not _is_number(value) or value != int(value) or not 0 <= value <= 100:
        raise ConfigError(key, f"{key} must be an integer 0-100, got {value!r}")
    return int(value)


def _tolerance(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not _is_number(value) or value < 0:
        raise ConfigError(key, f"{key} must be a finite non-negative number, got {value!r}")
    return float(value)


def _grpc_backends(body: dict[str, Any], backends: dict[str, Any]) -> dict[str, str]:
    grpc = body.get("grpc_backends", {})
    if not isinstance(grpc, dict):
        raise ConfigError("grpc_backends", "grpc_backends must be an object mapping version -> host:port")
    for version, target in grpc.items():
        if not isinstance(target, str) or not _GRPC_TARGET.fullmatch(target):
            raise ConfigError("grpc_backends", f"grpc_backends[{version!r}] must be host:port, got {target!r}")
        if version not in backends:
            raise ConfigError("grpc_backends", f"grpc_backends[{version!r}] has no REST backend; "
                              f"backends are {sorted(backends)}")
    return {str(k): v for k, v in grpc.items()}


def parse_config(body: Any) -> RouterConfig:
    """Validate a config as sent to ``PUT /router/config``; ConfigError names the field."""
    if not isinstance(body, dict):
        raise ConfigError("(body)", "config must be a JSON object")
    unknown = sorted(set(body) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown field(s) {unknown}; known fields are {list(CONFIG_KEYS)}")
    backends = body.get("backends", {})
    if not isinstance(backends, dict):
        raise ConfigError("backends", "backends must be an object mapping version -> URL")
    for version, url in backends.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or any(c in url for c in "?# \t\r\n"):
            raise ConfigError("backends", f"backends[{version!r}] must be an http(s) URL, got {url!r}")
    stable = body.get("stable")
    candidate = body.get("candidate")
    for key, value in (("stable", stable), ("candidate", candidate)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(key, f"{key} must be a version string or null, got {value!r}")
        if value is not None and value not in backends:
            raise ConfigError(key, f"{key} {value!r} has no backend; backends are {sorted(backends)}")
    grpc_backends = _grpc_backends(body, backends)
    weight = _percent(body, "weight")
    mirror = _percent(body, "mirror")
    if candidate is not None and stable is None:
        raise ConfigError("stable", f"candidate {candidate!r} needs a stable version beside it")
    if candidate is not None and candidate == stable:
        raise ConfigError("candidate", f"candidate {candidate!r} is also the stable version")
    if candidate is None and weight:
        raise ConfigError("weight", f"weight {weight} needs a candidate; candidate is null")
    if candidate is None and mirror:
        raise ConfigError("mirror", f"mirror {mirror} needs a candidate; candidate is null")
    return RouterConfig(
        backends={str(k): str(v).rstrip("/") for k, v in backends.items()},
        grpc_backends=grpc_backends,
        stable=stable,
        candidate=candidate,
        weight=weight,
        mirror=mirror,
        float_rtol=_tolerance(body, "float_rtol", DEFAULT_FLOAT_RTOL),
        float_atol=_tolerance(body, "float_atol", DEFAULT_FLOAT_ATOL),
    )


class StateFileError(Exception):
    """The persisted config cannot be read; the message names the file and the way back."""


def previous_path(path: Path) -> Path:
    """Where the config before the last change is kept: the way back from a damaged file."""
    return path.with_name(path.name + ".prev")


def save_config(config: RouterConfig, path: Path) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a config. The
    file it replaces is kept beside it (``.prev``), so a damaged file has a way back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(config.to_json(), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            try:
                _read(path)
                os.replace(path, previous_path(path))
            except StateFileError:
                pass  # never let a damaged file displace the last good one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> RouterConfig:
    try:
        return parse_config(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        raise StateFileError(f"{path}: {exc}") from exc


def load_config(path: Path) -> tuple[RouterConfig, str | None]:
    """The persisted config (empty if there is none yet) and a warning if it had to
    fall back to the previous copy because the file is damaged. Raises StateFileError
    naming both files when neither can be read."""
    if not path.exists():
        return RouterConfig(), None
    try:
        return _read(path), None
    except StateFileError as damaged:
        prev = previous_path(path)
        if not prev.exists():
            raise StateFileError(f"router state file {damaged} is unreadable and there is no previous copy "
                                 f"({prev}); fix it or delete it (the router then starts with no routes)") from None
        try:
            config = _read(prev)
        except StateFileError as also:
            raise StateFileError(f"router state file {damaged} and its previous copy {also} are both unreadable; "
                                 "fix or delete them") from None
        return config, (f"router state file {damaged} is unreadable; started from the previous copy {prev} "
                        f"(stable={config.stable} candidate={config.candidate} weight={config.weight})")
