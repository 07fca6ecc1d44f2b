import pytest

from .world import World, make_spec


@pytest.fixture
def world() -> World:
    """fraud:v1 serving; a canary 20% -> 50% with one error-rate metric, all in virtual time."""
    return World(make_spec()).serving()
