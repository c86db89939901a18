"""Helpers shared by the TFLite tests: the cosine of embedding rows."""

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``a [N, D]`` and ``b [N, D]`` (both finite) -> ``[N]``."""
    assert a.shape == b.shape
    assert np.isfinite(a).all()
    return (a * b).sum(1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )
