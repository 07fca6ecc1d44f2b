"""The Kubernetes platform: renders manifests/, applies them with server-side apply,
splits traffic with a Service, a Gateway API HTTPRoute or an Istio VirtualService, and
keeps the rollout state (ConfigMap) and run lock (Lease) in the cluster.

Layers, bottom up: ``client`` (the only module that calls the API; errors become the
project's types there), ``render`` (templates -> dicts, no I/O but reading templates),
``routers`` and ``state`` (on client + render), ``platform`` (the Platform).
"""

from rollout.platforms.kubernetes.platform import KubernetesPlatform, capabilities_for
from rollout.platforms.kubernetes.render import render_spec
from rollout.platforms.kubernetes.state import ConfigMapStateStore

__all__ = ["ConfigMapStateStore", "KubernetesPlatform", "capabilities_for", "render_spec"]
