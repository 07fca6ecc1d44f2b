"""The router's configuration: what it is, how it is validated, where it is kept.

Kept apart from the aiohttp server so the platform (which writes it) and the router
(which serves it) share one definition and one validator, and so a restarted router
comes back with the split it had: the config is written atomically to a state file on
every change.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FLOAT_RTOL = 1e-6
DEFAULT_FLOAT_ATOL = 1e-12
VERSION_HEADER = "x-rollout-version"  # on every response: the version that answered
PREVIEW_PREFIX = "/preview"  # <router>/preview/v2/... always reaches the candidate
CONFIG_KEYS = ("backends", "stable", "candidate", "weight", "mirror", "float_rtol", "float_atol")


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


def _percent(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(key, f"{key} must be an integer 0-100, got {value!r}")
    if not 0 <= value <= 100:
        raise ConfigError(key, f"{key} must be an integer 0-100, got {value!r}")
    return int(value)


def _tolerance(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(key, f"{key} must be a non-negative number, got {value!r}")
    return float(value)


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
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("backends", f"backends[{version!r}] must be an http(s) URL, got {url!r}")
    stable = body.get("stable")
    candidate = body.get("candidate")
    for key, value in (("stable", stable), ("candidate", candidate)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(key, f"{key} must be a version string or null, got {value!r}")
        if value is not None and value not in backends:
            raise ConfigError(key, f"{key} {value!r} has no backend; backends are {sorted(backends)}")
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
        stable=stable,
        candidate=candidate,
        weight=weight,
        mirror=mirror,
        float_rtol=_tolerance(body, "float_rtol", DEFAULT_FLOAT_RTOL),
        float_atol=_tolerance(body, "float_atol", DEFAULT_FLOAT_ATOL),
    )


def save_config(config: RouterConfig, path: Path) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(config.to_json(), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_config(path: Path) -> RouterConfig:
    """The persisted config, or an empty one if there is none yet."""
    if not path.exists():
        return RouterConfig()
    return parse_config(json.loads(path.read_text()))
