"""Small built-in 2-D classification data sets, generated in NumPy from a seed (no downloads).

Every function returns ``(X, y)``: ``X`` (B, 2) float64 features, ``y`` (B,) int64 labels in
``{0, 1}``, ``n_samples // 2`` of one class and the rest of the other. ``noise`` is the standard
deviation of the Gaussian noise added to every feature (a finite real >= 0). The same seed gives
the same data on every machine.
"""

from __future__ import annotations

import inspect

import numpy as np

from gradbench.params import seed_rng
from gradbench.spec import _check_real, check_choice

DATASETS = ("moons", "circles", "xor")
XOR_NOISE = 0.35  # xor's default noise (its signature's None: ``std`` is its former name)


def _check_n(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")


def _check_noise(noise, name: str = "noise") -> None:
    """A noise level is one finite real >= 0 (a list would be broadcast over the features)."""
    _check_real(name, noise, nonneg=True)


def moons(n_samples: int = 200, noise: float = 0.1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (as ``sklearn.datasets.make_moons``).

    Class 0: ``(cos t, sin t)``, class 1: ``(1 - cos t, 0.5 - sin t)``, ``t`` uniform in
    ``[0, pi]``, plus Gaussian noise of standard deviation ``noise``.
    """
    _check_n(n_samples)
    _check_noise(noise)
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
    _check_noise(noise)
    _check_real("factor", factor)
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


def xor(n_samples: int = 200, noise: float | None = None, seed=0, *, std: float | None = None):
    """XOR of Gaussian blobs: centres (+-1, +-1); label 1 where the signs of the centre differ.

    Sample ``i`` is drawn around the centre ``i % 4`` of (1, 1), (-1, -1), (1, -1), (-1, 1)
    (labels 0, 0, 1, 1), except that with ``n_samples % 4 == 2`` the last one is drawn around
    (1, -1), so that each class has ``n_samples // 2`` samples or one more. ``noise``: the
    standard deviation around each centre, default 0.35; ``std`` is its former name, still
    accepted (not both).
    """
    _check_n(n_samples)
    if std is not None and noise is not None:
        raise TypeError("xor got both noise and std (its former name): give noise only")
    name, noise = ("std", std) if std is not None else ("noise", XOR_NOISE if noise is None else noise)
    _check_noise(noise, name)
    rng = seed_rng(seed)
    centres = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = np.array([0, 0, 1, 1], dtype=np.int64)
    k = np.arange(n_samples) % 4
    if n_samples % 4 == 2:  # the remainder (1, 1), (-1, -1) would give class 0 two more
        k[-1] = 2
    X = centres[k] + noise * rng.standard_normal((n_samples, 2))
    y = labels[k]
    perm = rng.permutation(n_samples)
    return X[perm], y[perm]


def load(name: str, n_samples: int = 200, seed=0, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One of :data:`DATASETS` by name; ``kwargs`` are that generator's own (``noise``, and
    ``factor`` for circles), and any other is refused naming the ones it accepts."""
    check_choice("dataset", name, DATASETS)
    make = {"moons": moons, "circles": circles, "xor": xor}[name]
    accepted = [p for p in inspect.signature(make).parameters if p not in ("n_samples", "seed")]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TypeError(f"dataset {name!r} takes no keyword {unknown[0]!r}; its keywords are "
                        f"{', '.join(accepted)}, n_samples and seed")
    return make(n_samples, seed=seed, **kwargs)


def recipe(name: str, n_samples: int, seed, **kwargs) -> str:
    """The call of :func:`load` that draws these data, with every keyword of the generator
    (its defaults where ``kwargs`` do not give one), e.g.
    ``gradbench.datasets.load('moons', 200, seed=0, noise=0.1)``: what a training file records."""
    make = {"moons": moons, "circles": circles, "xor": xor}[name]
    keys = {k: p.default for k, p in inspect.signature(make).parameters.items()
            if k not in ("n_samples", "seed", "std")}
    keys.update(kwargs)
    if name == "xor" and keys["noise"] is None:
        keys["noise"] = XOR_NOISE
    words = "".join(f", {k}={v!r}" for k, v in keys.items())
    return f"gradbench.datasets.load({name!r}, {n_samples}, seed={seed!r}{words})"
