"""Optimisers: the update rule ``w <- w - lr * dL/dw`` and its refinements.

Each optimiser updates a dict of float arrays in place from a dict of gradients of the same
shapes. Weight decay is L2: ``dL/dw + weight_decay * w`` (coupled, as in SGD's classic form and
``torch.optim.SGD``/``Adam(weight_decay=)``, not AdamW), added to the gradient of every array it
is given, before momentum or Adam's moments. An optimiser keeps state (velocities, moments, the
step count) keyed by the arrays' names; :meth:`SGD.fresh` / :meth:`Adam.fresh` give the same
settings without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _real(name: str, value) -> float:
    """``value`` as a float after checking that it is a finite real number (TypeError /
    ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check(lr, momentum=0.0, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8):
    if not _real("lr", lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= _real("momentum", momentum) < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not _real("weight_decay", weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= _real(name, beta) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {beta}")
    if not _real("eps", eps) > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


@dataclass
class SGD:
    """SGD with optional momentum (heavy ball: v <- mu v + g; w <- w - lr v) and weight decay."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    _velocity: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        _check(self.lr, self.momentum, self.weight_decay)

    def fresh(self) -> SGD:
        """The same settings without state (no velocities)."""
        return SGD(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

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
        _check(self.lr, 0.0, self.weight_decay, self.beta1, self.beta2, self.eps)

    def fresh(self) -> Adam:
        """The same settings without state (no moments, step count 0)."""
        return Adam(lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay)

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


# The optimisers by name (gradbench.train.make_optimizer, gradbench.pretrain, the recurrent demos)
OPTIMIZERS = ("sgd", "momentum", "adam")


def resolve_momentum(optimizer, momentum: float | None) -> float:
    """``momentum`` of ``optimizer="momentum"`` (default 0.9); given with another optimizer
    (a name or an optimiser object) it is refused, not ignored."""
    if momentum is not None and not (isinstance(optimizer, str) and optimizer == "momentum"):
        raise ValueError(f"momentum={momentum!r} is used by optimizer='momentum' only, got optimizer="
                         + (f"{optimizer!r}" if isinstance(optimizer, str) else
                            f"{type(optimizer).__name__}(...): give the momentum to the optimiser itself"))
    return 0.9 if momentum is None else momentum
