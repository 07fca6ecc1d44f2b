"""One table says which Kubernetes routers exist: the spec's choices, the platform's
ROUTERS, their capabilities and the RBAC scopes cannot drift apart."""

from __future__ import annotations

import typing

import pytest

from rollout.platforms.kubernetes import rbac
from rollout.platforms.kubernetes.platform import ROUTERS
from rollout.platforms.kubernetes.routers import CAPABILITIES
from rollout.spec import KubernetesPlatformSpec

pytestmark = pytest.mark.timeout(30)


def test_every_router_the_spec_accepts_has_a_router_capabilities_and_rbac() -> None:
    accepted = set(typing.get_args(KubernetesPlatformSpec.model_fields["router"].annotation))
    assert accepted == set(ROUTERS) == set(CAPABILITIES) == set(rbac.ALL_ROUTERS)
