"""Small built-in 2-D classification data sets, generated in NumPy from a seed (no downloads).

Every function returns ``(X, y)``: ``X`` (B, 2) float64 features, ``y`` (B,) int64 labels in
``{0, 1}`` (``blobs`` with ``classes > 2`` gives more labels). The same seed gives the same
data on every machine.
"""

from __future__ import annotations

import numpy as np

from gradbench.params import seed_rng

DATASETS = ("moons", "circles", "xor")


def _check_n(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")


def moons(n_samples: int = 200, noise: float = 0.1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (as ``sklearn.datasets.make_moons``).

    Class 0: ``(cos t, sin t)``, class 1: ``(1 - cos t, 0.5 - sin t)``, ``t`` uniform in
    ``[0, pi]``, plus Gaussian noise of standard deviation ``noise``.
    """
    _check_n(n_samples)
    rng = seed_rng(seed)
    n0 = n_samples // 2
    n1 = n_samples - n0
    t0 = np.linspace(0.0, np.pi, n0)
    t1 = np.linspace(0.0, np.pi, n1)
    X = np.concatenate([
        np.stack([np.cos(t0), np.sin(t0)], axis=1),
        np.stack([1.0 - np.cos(t1), 0.5 - np.sin(t1)], axis=1),
    ])
    y = np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])
    X = X + noise * rng.standard_normal(X.shape)
    perm = rng.permutation(n_samples)
    return X[perm], y[perm]


def circles(n_samples: int = 200, noise: float = 0.05, factor: float = 0.5, seed=0):
    """Two concentric circles: class 0 of radius 1, class 1 of radius ``factor``, plus noise."""
    _check_n(n_samples)
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    rng = seed_rng(seed)
    n0 = n_samples // 2
    n1 = n_samples - n0
    t0 = np.linspace(0.0, 2 * np.pi, n0, endpoint=False)
    t1 = np.linspace(0.0, 2 * np.pi, n1, endpoint=False)
    X = np.concatenate([
        np.stack([np.cos(t0), np.sin(t0)], axis=1),
        factor * np.stack([np.cos(t1), np.sin(t1)], axis=1),
    ])
    y = np.concatenate([np.zeros(n0, dtype=np.int64), np.ones(n1, dtype=np.int64)])
    X = X + noise * rng.standard_normal(X.shape)
    perm = rng.permutation(n_samples)
    return X[perm], y[perm]


def xor(n_samples: int = 200, std: float = 0.35, seed=0):
    """XOR of Gaussian blobs: centres (+-1, +-1); label 1 where the signs of the centre differ."""
    _check_n(n_samples)
    rng = seed_rng(seed)
    centres = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = np.array([0, 0, 1, 1], dtype=np.int64)
    k = np.arange(n_samples) % 4
    X = centres[k] + std * rng.standard_normal((n_samples, 2))
    y = labels[k]
    perm = rng.permutation(n_samples)
    return X[perm], y[perm]


def load(name: str, n_samples: int = 200, seed=0, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One of :data:`DATASETS` by name."""
    from gradbench.spec import check_choice

    check_choice("dataset", name, DATASETS)
    return {"moons": moons, "circles": circles, "xor": xor}[name](n_samples, seed=seed, **kwargs)
