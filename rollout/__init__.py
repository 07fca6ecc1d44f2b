"""rollout: progressive delivery for machine-learning models.

Layers, lowest first (imports only flow downwards):
``errors``, ``clock``, ``spec``, ``steps``, ``state`` -> ``registry``, ``platforms``,
``analysis`` and the top-level ``strategies`` package -> ``engine`` -> ``cli``.
"""

__version__ = "0.1.0"
