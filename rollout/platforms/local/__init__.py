"""The local platform: model servers as processes on this machine behind a built-in router.

Offers ``LocalPlatform`` and ``list_local`` (from ``platform``). The router and the V2
server are runnable modules (``python -m rollout.platforms.local.router`` /
``.v2server``); importing this package stays cheap so they start fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalPlatform", "list_local"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rollout.platforms.local import platform

        return getattr(platform, name)
    raise AttributeError(name)
