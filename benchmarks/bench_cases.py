"""The benchmark cases: one place that says what work every implementation is timed on.

Activations stay O(1) through the depth in every case but two (tanh at the edge of chaos, sigmoid
at its edge of chaos, ReLU with He init; ELU, SELU, swish and GELU below), so no case times a
stack whose activations have decayed to exact zeros. The two ("regime" cases) time the paths a
vanishing or exploding demonstration takes: a zero-bias GELU stack whose signal has vanished
(below 2^-24 from layer ~25 on: phi's linear form) and a zero-bias ELU stack that
explodes (half of each layer's z near -2^k, where e^z rounds to 0). FLOPs of a plain dense stack: 6 B N^2 L (forward h W^T, backward dz W and dz^T h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import gradbench as gb

# Edge of chaos (Schoenholz et al. 2017) with sigma_b^2 = 0.05: chi_1 = 1.
TANH_EOC = dict(init="normal", sigma_w=math.sqrt(1.76), sigma_b=math.sqrt(0.05))
SIGMOID_EOC = dict(init="normal", sigma_w=9.869, sigma_b=math.sqrt(0.05))  # mean field, Gauss-Hermite
RELU_HE = dict(init="he_normal")  # sigma_w^2 = 2, zero bias: the ReLU critical point

# ELU at sigma_w = 1.25 and SELU at sigma_w = 0.95 keep the activations' std within 10^+-0.3 over
# 1000 layers (measured). SELU with LeCun's init (sigma_w = 1) is chaotic: its gradient grows to
# 10^5.6 at layer 0 and float32 runs differ from the float32 reference by up to 10^0.22 there
# (every implementation but Numba, in the make bench of 2026-12-03); at 0.95 the gradient spans 10^-2.6..10^3.5
# and C float32 agrees to 10^0.003. Swish has no such point at sigma_b^2 = 0.05: at sigma_w =
# 1.455 its gradient vanishes by 73 decades in 1000 layers, at 1.46 its activations grow to
# ~10^4.4 (and its gradient stays ~10^13 throughout): that one, which every dtype holds.
ELU_O1 = dict(init="normal", sigma_w=1.25, sigma_b=math.sqrt(0.05))
SELU_O1 = dict(init="normal", sigma_w=0.95, sigma_b=math.sqrt(0.05))
SWISH_EDGE = dict(init="normal", sigma_w=1.46, sigma_b=math.sqrt(0.05))
# GELU has the same abrupt transition: at sigma_w = 1.44 its gradient vanishes by 65 decades in
# 1000 layers, at 1.45 its activations grow to ~10^2.1 and its gradient stays ~10^8-10^9.
GELU_EDGE = dict(init="normal", sigma_w=1.45, sigma_b=math.sqrt(0.05))

INITS = {"tanh": TANH_EOC, "sigmoid": SIGMOID_EOC, "relu": RELU_HE, "elu": ELU_O1, "selu": SELU_O1,
         "swish": SWISH_EDGE, "gelu": GELU_EDGE}


@dataclass(frozen=True)
class Case:
    """One unit of work: a stack, its batch, and in which suites it runs.

    ``family``: "size" (the depth x width grid, drawn in the report's figure), "option"
    (activation, batch norm, residual at one size), "subnormal" (the plain float32 chain
    sinks into subnormals; peers are timed there with and without flush-to-zero) or "small"
    (calls of ~0.1-1 ms, where the Python around the kernels is most of a call: timed over
    :data:`SMALL_ROUNDS` rounds, the summary's "best gradbench vs plain loop" is the small-call ratio).
    ``quick``: part of ``make bench-quick``; every case runs in ``make bench``.
    """

    depth: int
    width: int
    batch: int
    dtype: str = "float64"
    activation: str = "tanh"
    batch_norm: bool = False
    residual: int = 0
    family: str = "size"
    quick: bool = True
    sigma_w: float | None = None  # overrides the activation's init gain (tiny subnormal stand-in)
    sigma_b: float | None = None  # overrides its bias scale (the regime cases: zero bias)
    regime: str = ""  # "vanished" or "exploding": the id's prefix and the README table's label

    @property
    def id(self) -> str:
        opts = "".join(["-bn" if self.batch_norm else "", f"-res{self.residual}" if self.residual else ""])
        prefix = "subnormal-" if self.family == "subnormal" else (f"{self.regime}-" if self.regime else "")
        return (f"{prefix}{self.activation}{opts}-L{self.depth}-n{self.width}-B{self.batch}-"
                f"{'f64' if self.dtype == 'float64' else 'f32'}")

    @property
    def flops(self) -> int:
        return 6 * self.batch * self.width ** 2 * self.depth

    def stack(self) -> gb.Stack:
        return gb.Stack(depth=self.depth, width=self.width, activation=self.activation,
                        batch_norm=self.batch_norm, residual=self.residual,
                        residual_scale=0.5 if self.residual else 1.0, dtype=self.dtype,
                        **{**INITS[self.activation],
                           **({"sigma_w": self.sigma_w} if self.sigma_w is not None else {}),
                           **({"sigma_b": self.sigma_b} if self.sigma_b is not None else {})})

    def tiny(self) -> "Case":
        """The stand-in run when benchmarks are disabled (``make test``): same options, small sizes.

        The subnormal stand-in decays fast instead of deep (tanh, sigma_w = 0.5: about 0.3
        decades per layer), so that plain float32 still sinks into subnormals within 160 layers
        and the partial check of the peers is exercised too.
        """
        if self.family == "subnormal":
            return replace(self, depth=160, width=8, batch=4, sigma_w=0.5)
        return replace(self, depth=min(self.depth, 12), width=min(self.width, 8), batch=min(self.batch, 4))


# (L, N, B) of the small calls: a 10-layer net of width 16 over 20 samples (the training demos'
# size), ten times deeper, and a 10-layer net of width 64 over 64 samples
SMALL_SIZES = [(10, 16, 20), (100, 16, 20), (10, 64, 64)]
# Rounds of a small case: its call takes ~0.1-1 ms, so the grid's 20 would be a minimum over a few
# ms of a shared machine's time; 2,000 rounds take ~1 s (the plain loop's ~0.1 ms calls: 0.2 s).
SMALL_ROUNDS = 2_000

SIZES = [  # (L, N, B): very deep and narrow ... wide
    (100_000, 8, 4),
    (10_000, 32, 16),
    (1_000, 64, 64),
    (200, 512, 256),
    (50, 2048, 512),
]


def _cases() -> list[Case]:
    cases = []
    for L, N, B in SIZES:
        for dt in ("float64", "float32"):
            # quick: the deep-and-narrow regime, where per-layer overhead decides (the deepest in
            # float64 only: its NumPy reference alone takes ~10 s a call)
            cases.append(Case(L, N, B, dt, quick=1_000 <= L < 100_000 or (L == 100_000 and dt == "float64")))
    L, N, B = 1_000, 64, 64
    for dt in ("float64", "float32"):
        for act, bn, res in (("sigmoid", False, 0), ("relu", False, 0), ("tanh", True, 0),
                             ("tanh", False, 2), ("tanh", True, 2)):
            # Batch norm without residual is chaotic (its gradient grows ~0.044 decades per
            # layer, Yang et al. 2019): at L = 1000 a rounding difference grows by 10^44 and no
            # two correct implementations agree on the loss; at L = 100 float32 runs already
            # differ from the float64 truth by 2 %. At L = 50 float32 agrees to ~1e-4.
            depth = 50 if bn and not res else L
            cases.append(Case(depth, N, B, dt, act, bn, res, family="option", quick=dt == "float64" or act == "relu"))
        for act in ("elu", "selu", "swish", "gelu"):  # the other vectorised activations (make bench only)
            cases.append(Case(L, N, B, dt, act, family="option", quick=False))
    # the regime cases (make bench only, float64): GELU at sigma_w = 1 halves its signal a layer
    # (the plain chain underflows: gradbench alone); ELU at 2.5 grows it ~1.7x a layer, to
    # ~10^72 at L = 300, which every peer holds
    cases.append(Case(L, N, B, "float64", "gelu", family="option", quick=False, sigma_w=1.0, sigma_b=0.0,
                      regime="vanished"))
    cases.append(Case(300, N, B, "float64", "elu", family="option", quick=False, sigma_w=2.5, sigma_b=0.0,
                      regime="exploding"))
    # Plain float32 sinks below 1.2e-38 about 3800 layers from the top and spends the last
    # ~15 % of the depth in subnormals (the exact chain reaches ~1e-48 at layer 0).
    cases.append(Case(4_800, 32, 16, "float32", family="subnormal"))
    # small calls (sweeps, teaching notebooks: thousands of them), the plain loop's ground
    cases.extend(Case(L, N, B, family="small") for L, N, B in SMALL_SIZES)
    return cases


CASES = _cases()
