from tests.fixtures.prometheus import own_prometheus, prometheus  # noqa: F401
