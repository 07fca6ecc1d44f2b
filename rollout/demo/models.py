"""Tiny iris models for the demo, tests and benchmarks.

They are real artifacts (``model.joblib`` written by joblib), so any sklearn V2 server
(the built-in one or MLServer's sklearn runtime) serves them. The bad one is bad in
the artifact itself, not in a mock: ``FlakyClassifier`` is pickled with the model and
raises or sleeps inside ``predict``, which is what a broken model release looks like
to the server that hosts it. The servers must be able to import ``rollout`` to unpickle
it (the local supervisor sets PYTHONPATH for that).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

MODEL_FILE = "model.joblib"


class FlakyClassifier:
    """Wraps a fitted classifier; ``predict`` fails with probability ``error_rate``
    (ValueError) and takes ``extra_latency_ms`` longer than the wrapped model."""

    def __init__(self, inner: Any, error_rate: float, extra_latency_ms: float) -> None:
        self.inner = inner
        self.error_rate = error_rate
        self.extra_latency_ms = extra_latency_ms
        self.classes_ = getattr(inner, "classes_", None)

    def _misbehave(self) -> None:
        if self.extra_latency_ms > 0:
            time.sleep(self.extra_latency_ms / 1000.0)
        if self.error_rate > 0 and random.random() < self.error_rate:
            raise ValueError(f"FlakyClassifier: injected failure (error_rate={self.error_rate})")

    def predict(self, X: Any) -> Any:
        self._misbehave()
        return self.inner.predict(X)

    def predict_proba(self, X: Any) -> Any:
        self._misbehave()
        return self.inner.predict_proba(X)


def _fit_iris(seed: int) -> Any:
    """Logistic regression on a seed-chosen 60% of iris: different seeds give models
    that agree on most inputs but not all, which is what shadow comparison needs."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))[: int(len(X) * 0.6)]
    model = LogisticRegression(max_iter=500)
    model.fit(X[idx], y[idx])
    return model


def _dump(model: Any, directory: Path | str) -> Path:
    import joblib

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path / MODEL_FILE)
    return path


def make_good_model(directory: Path | str, seed: int = 0) -> Path:
    """Write a working iris classifier to ``directory/model.joblib``; returns the dir."""
    return _dump(_fit_iris(seed), directory)


def make_bad_model(
    directory: Path | str, error_rate: float = 0.3, extra_latency_ms: float = 0.0, seed: int = 0
) -> Path:
    """Write an iris classifier that fails ``error_rate`` of predictions and adds
    ``extra_latency_ms`` to each; returns the dir."""
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be within 0..1, got {error_rate}")
    return _dump(FlakyClassifier(_fit_iris(seed), error_rate, extra_latency_ms), directory)


def iris_request(rows: int = 1, seed: int | None = None) -> dict[str, Any]:
    """A V2 infer request body with ``rows`` iris-like rows (random within the
    feature ranges when ``seed`` is given, else the first iris sample repeated)."""
    if seed is None:
        data = [[5.1, 3.5, 1.4, 0.2]] * rows
    else:
        rnd = random.Random(seed)
        lows, highs = (4.3, 2.0, 1.0, 0.1), (7.9, 4.4, 6.9, 2.5)
        data = [[round(rnd.uniform(lo, hi), 2) for lo, hi in zip(lows, highs)] for _ in range(rows)]
    return {"inputs": [{"name": "input-0", "shape": [rows, 4], "datatype": "FP64", "data": data}]}
