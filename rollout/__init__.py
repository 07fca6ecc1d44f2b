"""rollout: progressive delivery for machine-learning models.

Layers, top first (imports only flow downwards; pyproject.toml's import-linter contracts
check it): ``cli`` -> ``demo`` | ``integrations`` -> ``controller`` -> ``app`` -> ``engine``
-> ``gates`` | ``analysis`` | ``platforms`` -> ``strategies`` | ``view`` -> ``state`` |
``spec`` -> ``steps`` | ``registry`` -> ``names`` -> ``errors`` -> ``redact``.
"""

__version__ = "0.1.0"
