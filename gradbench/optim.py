"""Optimisers: the update rule ``w <- w - lr * dL/dw`` and its refinements.

Each optimiser updates a dict of float arrays in place from a dict of gradients of the same
shapes. Weight decay is L2: ``dL/dw + weight_decay * w`` (coupled, as in SGD's classic form).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _check(lr, momentum=0.0, weight_decay=0.0):
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


@dataclass
class SGD:
    """SGD with optional momentum (heavy ball: v <- mu v + g; w <- w - lr v) and weight decay."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    _velocity: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        _check(self.lr, self.momentum, self.weight_decay)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, g in grads.items():
            w = params[name]
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.momentum:
                v = self._velocity.setdefault(name, np.zeros_like(w))
                v *= self.momentum
                v += g
                g = v
            w -= (self.lr * g).astype(w.dtype)


@dataclass
class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; weight decay added to the gradient."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    _m: dict = field(default_factory=dict, repr=False)
    _v: dict = field(default_factory=dict, repr=False)
    _t: int = 0

    def __post_init__(self):
        _check(self.lr, 0.0, self.weight_decay)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self._t += 1
        c1, c2 = 1 - self.beta1**self._t, 1 - self.beta2**self._t
        for name, g in grads.items():
            w = params[name]
            if self.weight_decay:
                g = g + self.weight_decay * w
            m = self._m.setdefault(name, np.zeros_like(w))
            v = self._v.setdefault(name, np.zeros_like(w))
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            w -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(w.dtype)
