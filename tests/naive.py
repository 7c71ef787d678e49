"""An independent, plain implementation of the model: no rescaling, no shared code with gradbench.

Written from the formulas of docs/design.md section 2 with one sample-by-sample view where that is
clearer, so that a bug in the reference does not hide itself in the tests. Used for finite
differences (its loss) and as the plain unscaled backward at depths where float64 is enough.
"""

from __future__ import annotations

import math

import numpy as np

SELU_L = 1.0507009873554804934193349852946
SELU_A = 1.6732632423543772848170429916717


def bn_mean(z, rows=4):
    """The batch mean as docs/design.md takes it: per block of 4 samples the sum of their
    differences from the block's first, then the first sample plus the blocks' sums (each block's
    count times its first's difference from the first sample, plus its sum) over B; exact for a
    unit whose samples are all equal. Written again here, sample by sample, so that a chaotic
    stack's rounding here is the reference's."""
    B = len(z)
    total = np.zeros_like(z[0])
    for q0 in range(0, B, rows):
        c, n = z[q0], min(rows, B - q0)
        s = z[q0] - c
        for i in range(q0 + 1, q0 + n):
            s = s + (z[i] - c)
        total = total + (n * (c - z[0]) + s)
    return z[0] + total / B


def phi(name, z, p):
    if name == "identity":
        return z
    if name == "sigmoid":
        return 0.5 * (1 + np.tanh(0.5 * z))  # a different, equivalent formula
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name in ("leaky_relu", "prelu"):
        return np.maximum(z, 0) + p * np.minimum(z, 0)
    if name == "elu":
        return np.maximum(z, 0) + p * (np.exp(np.minimum(z, 0)) - 1)
    if name == "selu":
        return SELU_L * (np.maximum(z, 0) + SELU_A * (np.exp(np.minimum(z, 0)) - 1))
    if name == "swish":
        return z * phi("sigmoid", z, p)
    if name == "gelu":
        return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(z)
    raise ValueError(name)


def dphi(name, z, p):
    if name == "identity":
        return np.ones_like(z)
    if name == "sigmoid":
        s = phi("sigmoid", z, p)
        return s * (1 - s)
    if name == "tanh":
        return 1 / np.cosh(z) ** 2
    if name == "relu":
        return (z > 0) * 1.0
    if name in ("leaky_relu", "prelu"):
        return np.where(z > 0, 1.0, p)
    if name == "elu":
        return np.where(z > 0, 1.0, p * np.exp(np.minimum(z, 0)))
    if name == "selu":
        return SELU_L * np.where(z > 0, 1.0, SELU_A * np.exp(np.minimum(z, 0)))
    if name == "swish":
        s = phi("sigmoid", z, p)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        cdf = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))(z)
        return cdf + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    raise ValueError(name)


def forward(stack, P, x, t=None):
    """Loss and the saved values of a plain forward pass. P: dict of float64 arrays."""
    p = stack.act_param
    h = x @ P["W_in"].T + P["b_in"] if "W_in" in P else x
    hs, zs, xhats, rstds = [h], [], [], []
    k = stack.residual
    for l in range(stack.depth):
        z = h @ P["W"][l].T + P["b"][l]
        if stack.batch_norm:
            mu = bn_mean(z)
            var = np.mean((z - mu) ** 2, axis=0)
            rstd = 1 / np.sqrt(var + stack.bn_eps)
            xhat = (z - mu) * rstd
            z = P["gamma"][l] * xhat + P["beta"][l]
            xhats.append(xhat)
            rstds.append(rstd)
        zs.append(z)
        a = phi(stack.activation, z, P["slope"][l] if stack.activation == "prelu" else p)
        if k and (l + 1) % k == 0:
            a = hs[l + 1 - k] + stack.residual_scale * a
        h = a
        hs.append(h)
    if stack.loss == "sum_squares":
        return 0.5 * np.sum(h * h), dict(hs=hs, zs=zs, xhats=xhats, rstds=rstds, y=None)
    y = h @ P["W_out"].T + P["b_out"]
    B, O = y.shape
    if stack.loss == "mse":
        loss = np.mean((y - t) ** 2)
    elif stack.loss == "bce":
        s = 1 / (1 + np.exp(-y))
        loss = -np.mean(t * np.log(s) + (1 - t) * np.log(1 - s))
    else:
        ly = y - np.log(np.sum(np.exp(y), axis=1, keepdims=True))
        loss = -np.mean(ly[np.arange(B), t])
    return loss, dict(hs=hs, zs=zs, xhats=xhats, rstds=rstds, y=y)


def _clip(g, mode, c):
    if mode == "value":
        return np.clip(g, -c, c)
    n = np.linalg.norm(g)
    return g * (c / n) if n > c else g


def backward(stack, P, x, t=None, sizes=None):
    """Plain (unscaled) gradients; applies signal clipping when the stack asks for it. ``sizes``
    (an array of L + 1): filled with what the clip tests before it clips dL/dh_l (max |entry| for
    value, the norm for norm; l = L the top signal)."""
    loss, s = forward(stack, P, x, t)
    hs, zs = s["hs"], s["zs"]
    L, k = stack.depth, stack.residual
    clip = stack.clip if stack.clip_on == "signal" else None
    grads = {n: np.zeros_like(P[n]) for n in P}
    h = hs[-1]
    if stack.loss == "sum_squares":
        g = h.copy()
    else:
        y = s["y"]
        B, O = y.shape
        if stack.loss == "mse":
            dy = 2 * (y - t) / (B * O)
        elif stack.loss == "bce":
            dy = (1 / (1 + np.exp(-y)) - t) / (B * O)
        else:
            e = np.exp(y - y.max(axis=1, keepdims=True))
            dy = e / e.sum(axis=1, keepdims=True)
            dy[np.arange(B), t] -= 1
            dy /= B
        grads["W_out"] = dy.T @ h
        grads["b_out"] = dy.sum(axis=0)
        g = dy @ P["W_out"]
    def clipped(g, l):
        if sizes is not None:
            sizes[l] = np.max(np.abs(g)) if clip == "value" else np.linalg.norm(g)
        return _clip(g, clip, stack.clip_threshold)

    if clip:
        g = clipped(g, L)
    signal = [None] * L
    pending = None
    for l in range(L - 1, -1, -1):
        da = g
        if k and (l + 1) % k == 0:
            pending = g
            da = stack.residual_scale * g
        slope = P["slope"][l] if stack.activation == "prelu" else stack.act_param
        dz = da * dphi(stack.activation, zs[l], slope)
        if stack.activation == "prelu":
            grads["slope"][l] = np.sum(da * np.minimum(zs[l], 0))
        if stack.batch_norm:
            xhat, rstd, B = s["xhats"][l], s["rstds"][l], da.shape[0]
            grads["gamma"][l] = np.sum(dz * xhat, axis=0)
            grads["beta"][l] = np.sum(dz, axis=0)
            dxhat = dz * P["gamma"][l]
            dz = rstd / B * (B * dxhat - dxhat.sum(axis=0) - xhat * np.sum(dxhat * xhat, axis=0))
        grads["W"][l] = dz.T @ hs[l]
        grads["b"][l] = dz.sum(axis=0)
        g = dz @ P["W"][l]
        if k and l % k == 0:
            g = g + pending
        if clip:
            g = clipped(g, l)
        signal[l] = np.linalg.norm(g)
    if "W_in" in P:
        grads["W_in"] = g.T @ x
        grads["b_in"] = g.sum(axis=0)
    return loss, grads, np.array(signal)


def clip_params(stack, grads):
    """Parameter-gradient clipping (clip_on = layer or global), written plainly."""
    c = stack.clip_threshold
    out = {n: g.copy() for n, g in grads.items()}
    if stack.clip == "value":
        return {n: np.clip(g, -c, c) for n, g in out.items()}
    layer_names = [n for n in ("W", "b", "gamma", "beta", "slope") if n in out]
    groups = [[(n, l) for n in layer_names] for l in range(stack.depth)]
    groups += [[(n, None) for n in names if n in out] for names in (("W_in", "b_in"), ("W_out", "b_out"))]
    groups = [gr for gr in groups if gr]

    def part(n, l):
        return out[n] if l is None else out[n][l]

    def norm(group):
        return math.sqrt(sum(float(np.sum(part(n, l) ** 2)) for n, l in group))

    if stack.clip_on == "layer":
        for group in groups:
            nrm = norm(group)
            if nrm > c:
                for n, l in group:
                    if l is None:
                        out[n] = out[n] * (c / nrm)
                    else:
                        out[n][l] = out[n][l] * (c / nrm)
        return out
    total = math.sqrt(sum(norm(g) ** 2 for g in groups))
    if total > c:
        out = {n: g * (c / total) for n, g in out.items()}
    return out
