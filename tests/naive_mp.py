"""An independent oracle with an unbounded exponent: the plain chain rule in mpmath.

mpmath's numbers carry arbitrary exponents, so a plain, unscaled forward and backward pass is
exact (to its working precision) at any depth: no rescaling, no shared code with gradbench.
Slow (~10 us per operation), so it is used on narrow stacks: width 2-4, batch 1-2.
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 40

SELU_L = mp.mpf("1.0507009873554804934193349852946")
SELU_A = mp.mpf("1.6732632423543772848170429916717")


def phi(name, z, p):
    if name == "identity":
        return z
    if name == "tanh":
        return mp.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + mp.exp(-z))
    if name == "relu":
        return z if z > 0 else mp.mpf(0)
    if name in ("leaky_relu", "prelu"):
        return z if z > 0 else p * z
    if name == "elu":
        return z if z > 0 else p * mp.expm1(z)
    if name == "selu":
        return SELU_L * (z if z > 0 else SELU_A * mp.expm1(z))
    if name == "swish":
        return z / (1 + mp.exp(-z))
    if name == "gelu":
        return z * _ncdf(z)
    raise ValueError(name)


def dphi(name, z, p):
    if name == "identity":
        return mp.mpf(1)
    if name == "tanh":
        return mp.sech(z) ** 2
    if name == "sigmoid":
        return 1 / (4 * mp.cosh(z / 2) ** 2)
    if name == "relu":
        return mp.mpf(1) if z > 0 else mp.mpf(0)
    if name in ("leaky_relu", "prelu"):
        return mp.mpf(1) if z > 0 else p
    if name == "elu":
        return mp.mpf(1) if z > 0 else p * mp.exp(z)
    if name == "selu":
        return SELU_L * (1 if z > 0 else SELU_A * mp.exp(z))
    if name == "swish":
        s, t = 1 / (1 + mp.exp(-z)), 1 / (1 + mp.exp(z))  # s(z), s(-z) = 1 - s(z) without cancelling
        return s + z * s * t
    if name == "gelu":
        return _ncdf(z) + z * mp.npdf(z)
    raise ValueError(name)


def _ncdf(z):
    """Phi(z); mpmath's erfc overflows beyond |z| = 1e6: there 1 above, and below the asymptotic
    series phi(z) / |z| (1 - 1/z^2 + 3/z^4 - 15/z^6) (exact to 1e-46 relative: GELU's tail
    values, 10^-3e14, are not 0)."""
    if z > 1e6:
        return mp.mpf(1)
    if z < -1e6:
        return mp.npdf(z) / -z * (1 - 1 / z**2 + 3 / z**4 - 15 / z**6)
    return mp.ncdf(z)


def _log10_norm(rows):
    s = sum(v * v for row in rows for v in row)
    return float(mp.log10(mp.sqrt(s))) if s > 0 else float("-inf")


def chain(activation, p, W, x, residual=0, b=None):
    """Plain forward and backward of h_{l+1} = phi(h_l W_l^T + b_l) (``b`` (L, N), default zero
    biases), loss 0.5 ||h_L||^2; with ``residual`` = k, h_{l+1} = h_{l+1-k} + phi(h_l W_l^T + b_l)
    at the end of every group of k.

    W: (L, N, N) floats, x: (B, N). Returns log10 of the loss, of ||dL/dW_l|| (L,) and of
    ||dL/dh_l|| (L,), all exact to mpmath's precision whatever the depth.
    """
    L, N = len(W), len(W[0])
    Wm = [[[mp.mpf(float(W[l][i][j])) for j in range(N)] for i in range(N)] for l in range(L)]
    bm = [[mp.mpf(float(b[l][i])) if b is not None else mp.mpf(0) for i in range(N)] for l in range(L)]
    H = [[[mp.mpf(float(v)) for v in row] for row in x]]
    Z = []
    for l in range(L):
        z = [[mp.fsum(h[k] * Wm[l][i][k] for k in range(N)) + bm[l][i] for i in range(N)] for h in H[-1]]
        Z.append(z)
        a = [[phi(activation, v, p) for v in row] for row in z]
        if residual and (l + 1) % residual == 0:
            a = [[s + v for s, v in zip(srow, row)] for srow, row in zip(H[l + 1 - residual], a)]
        H.append(a)
    loss = mp.fsum(v * v for row in H[-1] for v in row) / 2
    g = [row[:] for row in H[-1]]
    gW, gh = [None] * L, [None] * L
    skip = None
    for l in range(L - 1, -1, -1):
        if residual and (l + 1) % residual == 0:
            skip = [row[:] for row in g]  # dL/dh_{l+1} also flows down the skip
        dz = [[g[b][i] * dphi(activation, Z[l][b][i], p) for i in range(N)] for b in range(len(g))]
        gW[l] = _log10_norm([[mp.fsum(dz[b][i] * H[l][b][k] for b in range(len(g))) for k in range(N)]
                             for i in range(N)])
        g = [[mp.fsum(dz[b][i] * Wm[l][i][k] for i in range(N)) for k in range(N)] for b in range(len(g))]
        if residual and l % residual == 0:
            g = [[u + v for u, v in zip(grow, srow)] for grow, srow in zip(g, skip)]
        gh[l] = _log10_norm(g)
    return float(mp.log10(loss)), gW, gh


def bn_chain(activation, p, W, b, gamma, beta, eps, x):
    """Plain forward and backward of h_{l+1} = phi(BN(h_l W_l^T + b_l)) with train-mode batch norm
    (batch mean, biased batch variance, y = gamma (z - mean) / sqrt(var + eps) + beta), loss
    0.5 ||h_L||^2. Returns log10 of the loss, of ||dL/dW_l|| (L,) and of ||dL/dh_l|| (L,)."""
    L, N, B = len(W), len(W[0]), len(x)
    f = lambda v: mp.mpf(float(v))  # noqa: E731
    H = [[[f(v) for v in row] for row in x]]
    saved = []
    for l in range(L):
        z = [[mp.fsum(h[k] * f(W[l][i][k]) for k in range(N)) + f(b[l][i]) for i in range(N)] for h in H[-1]]
        mean = [mp.fsum(z[r][i] for r in range(B)) / B for i in range(N)]
        rstd = [1 / mp.sqrt(mp.fsum((z[r][i] - mean[i]) ** 2 for r in range(B)) / B + f(eps)) for i in range(N)]
        xhat = [[(z[r][i] - mean[i]) * rstd[i] for i in range(N)] for r in range(B)]
        y = [[f(gamma[l][i]) * xhat[r][i] + f(beta[l][i]) for i in range(N)] for r in range(B)]
        saved.append((xhat, rstd, y))
        H.append([[phi(activation, v, p) for v in row] for row in y])
    loss = mp.fsum(v * v for row in H[-1] for v in row) / 2
    g = [row[:] for row in H[-1]]
    gW, gh = [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        xhat, rstd, y = saved[l]
        dy = [[g[r][i] * dphi(activation, y[r][i], p) for i in range(N)] for r in range(B)]
        mdy = [mp.fsum(dy[r][i] for r in range(B)) / B for i in range(N)]
        mdx = [mp.fsum(dy[r][i] * xhat[r][i] for r in range(B)) / B for i in range(N)]
        dz = [[f(gamma[l][i]) * rstd[i] * (dy[r][i] - mdy[i] - xhat[r][i] * mdx[i]) for i in range(N)]
              for r in range(B)]
        gW[l] = _log10_norm([[mp.fsum(dz[r][i] * H[l][r][k] for r in range(B)) for k in range(N)]
                             for i in range(N)])
        g = [[mp.fsum(dz[r][i] * f(W[l][i][k]) for i in range(N)) for k in range(N)] for r in range(B)]
        gh[l] = _log10_norm(g)
    return float(mp.log10(loss)), gW, gh


def rnn_chain(activation, p, W_ih, W_hh, bias, X):
    """Plain forward and backward through time of the vanilla cell
    h_t = phi(x_t W_ih^T + h_{t-1} W_hh^T + bias), h_{-1} = 0, loss 0.5 ||h_{T-1}||^2.

    X: (T, B, D) floats. Returns log10 of the loss, of ||dL/dh_t|| (T,) and of the steps'
    dW_hh terms ||dz_t^T h_{t-1}|| (T,), exact to mpmath's precision whatever the saturation.
    """
    T, B, D = len(X), len(X[0]), len(X[0][0])
    N = len(W_hh)
    Wi = [[mp.mpf(float(v)) for v in row] for row in W_ih]
    Wh = [[mp.mpf(float(v)) for v in row] for row in W_hh]
    b = [mp.mpf(float(v)) for v in bias]
    H, Z = [[[mp.mpf(0)] * N for _ in range(B)]], []
    for t in range(T):
        z = [[mp.fsum([b[i]] + [mp.mpf(float(X[t][r][k])) * Wi[i][k] for k in range(D)]
                      + [H[-1][r][k] * Wh[i][k] for k in range(N)]) for i in range(N)] for r in range(B)]
        Z.append(z)
        H.append([[phi(activation, v, p) for v in row] for row in z])
    loss = mp.fsum(v * v for row in H[-1] for v in row) / 2
    g = [row[:] for row in H[-1]]
    gh, gW = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        gh[t] = _log10_norm(g)
        dz = [[g[r][i] * dphi(activation, Z[t][r][i], p) for i in range(N)] for r in range(B)]
        gW[t] = _log10_norm([[mp.fsum(dz[r][i] * H[t][r][k] for r in range(B)) for k in range(N)] for i in range(N)])
        g = [[mp.fsum(dz[r][i] * Wh[i][k] for i in range(N)) for k in range(N)] for r in range(B)]
    return float(mp.log10(loss)), gh, gW


def lstm_chain(W_ih, W_hh, bias, X):
    """The LSTM (torch's equations, gates i, f, g, o; h_{-1} = c_{-1} = 0), loss 0.5 ||h_{T-1}||^2:
    log10 of ||dL/dh_t|| (T,) and of ||dz_t^T h_{t-1}|| (T,), plain in mpmath."""
    T, B, D = len(X), len(X[0]), len(X[0][0])
    N = len(W_hh[0])
    Wi = [[mp.mpf(float(v)) for v in row] for row in W_ih]
    Wh = [[mp.mpf(float(v)) for v in row] for row in W_hh]
    b = [mp.mpf(float(v)) for v in bias]
    sig = lambda z: 1 / (1 + mp.exp(-z))  # noqa: E731
    zero = [[mp.mpf(0)] * N for _ in range(B)]
    H, C, Z = [zero], [zero], []
    for t in range(T):
        Z.append([[mp.fsum([b[i]] + [mp.mpf(float(X[t][r][k])) * Wi[i][k] for k in range(D)]
                           + [H[-1][r][k] * Wh[i][k] for k in range(N)]) for i in range(4 * N)] for r in range(B)])
        C.append([[sig(z[N + j]) * C[-1][r][j] + sig(z[j]) * mp.tanh(z[2 * N + j]) for j in range(N)]
                  for r, z in enumerate(Z[-1])])
        H.append([[sig(z[3 * N + j]) * mp.tanh(C[-1][r][j]) for j in range(N)] for r, z in enumerate(Z[-1])])
    g, gc = [row[:] for row in H[-1]], [[mp.mpf(0)] * N for _ in range(B)]
    gh, gW = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        gh[t] = _log10_norm(g)
        dz, ng, ngc = [], [], []
        for r in range(B):
            z, c, cp = Z[t][r], C[t + 1][r], C[t][r]
            dc = [gc[r][j] + g[r][j] * sig(z[3 * N + j]) * mp.sech(c[j]) ** 2 for j in range(N)]
            d = ([dc[j] * mp.tanh(z[2 * N + j]) * dphi("sigmoid", z[j], 0) for j in range(N)]
                 + [dc[j] * cp[j] * dphi("sigmoid", z[N + j], 0) for j in range(N)]
                 + [dc[j] * sig(z[j]) * mp.sech(z[2 * N + j]) ** 2 for j in range(N)]
                 + [g[r][j] * mp.tanh(c[j]) * dphi("sigmoid", z[3 * N + j], 0) for j in range(N)])
            dz.append(d)
            ng.append([mp.fsum(d[i] * Wh[i][k] for i in range(4 * N)) for k in range(N)])
            ngc.append([dc[j] * sig(z[N + j]) for j in range(N)])
        gW[t] = _log10_norm([[mp.fsum(dz[r][i] * H[t][r][k] for r in range(B)) for k in range(N)]
                             for i in range(4 * N)])
        g, gc = ng, ngc
    return gh, gW


def _gru_cell(gi, gh, hp, N, sig):
    """One GRU state from the input's and the state's pre-activations gi, gh (3N each: r, z, n)
    and h_{t-1} = hp: (h_t, (z_r, z_z, z_n, h W_hn^T + b_hn))."""
    zr = [gi[j] + gh[j] for j in range(N)]
    zz = [gi[N + j] + gh[N + j] for j in range(N)]
    hn = gh[2 * N:]
    zn = [gi[2 * N + j] + sig(zr[j]) * hn[j] for j in range(N)]
    return [sig(-zz[j]) * mp.tanh(zn[j]) + sig(zz[j]) * hp[j] for j in range(N)], (zr, zz, zn, hn)


def gru_chain(W_ih, W_hh, b_ih, b_hh, X):
    """The GRU (torch's equations: r, z, n; n = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn)),
    h' = (1 - z) n + z h; h_{-1} = 0), loss 0.5 ||h_{T-1}||^2: log10 of the loss, of
    ||dL/dh_t|| (T,) and of ||dz_t^T h_{t-1}|| (T,), plain in mpmath."""
    T, B, D = len(X), len(X[0]), len(X[0][0])
    N = len(W_hh[0])
    mpf = lambda v: mp.mpf(float(v))  # noqa: E731
    Wi, Wh = [[mpf(v) for v in row] for row in W_ih], [[mpf(v) for v in row] for row in W_hh]
    bi, bh = [mpf(v) for v in b_ih], [mpf(v) for v in b_hh]
    sig = lambda z: 1 / (1 + mp.exp(-z))  # noqa: E731
    H, S = [[[mp.mpf(0)] * N for _ in range(B)]], []
    for t in range(T):
        rows, saved = [], []
        for r in range(B):
            hp = H[-1][r]
            gi = [mp.fsum([bi[i]] + [mpf(X[t][r][k]) * Wi[i][k] for k in range(D)]) for i in range(3 * N)]
            gh = [mp.fsum([bh[i]] + [hp[k] * Wh[i][k] for k in range(N)]) for i in range(3 * N)]
            h, keep = _gru_cell(gi, gh, hp, N, sig)
            rows.append(h)
            saved.append(keep)
        H.append(rows)
        S.append(saved)
    loss = mp.fsum(v * v for row in H[-1] for v in row) / 2
    g = [row[:] for row in H[-1]]
    gh_, gW = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        gh_[t] = _log10_norm(g)
        dzh, ng = [], []
        for r in range(B):
            zr, zz, zn, hn = S[t][r]
            hp = H[t][r]
            dn = [g[r][j] * sig(-zz[j]) * mp.sech(zn[j]) ** 2 for j in range(N)]
            d = ([dn[j] * hn[j] * dphi("sigmoid", zr[j], 0) for j in range(N)]
                 + [g[r][j] * (hp[j] - mp.tanh(zn[j])) * dphi("sigmoid", zz[j], 0) for j in range(N)]
                 + [dn[j] * sig(zr[j]) for j in range(N)])
            dzh.append(d)
            ng.append([g[r][k] * sig(zz[k]) + mp.fsum(d[i] * Wh[i][k] for i in range(3 * N)) for k in range(N)])
        gW[t] = _log10_norm([[mp.fsum(dzh[r][i] * H[t][r][k] for r in range(B)) for k in range(N)]
                             for i in range(3 * N)])
        g = ng
    return float(mp.log10(loss)), gh_, gW


def recurrent_grads(cell, activation, p, W_ih, W_hh, b_ih, b_hh, X):
    """The totals of the parameter gradients through time, plain in mpmath: the vanilla cell
    (h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)), the LSTM (gates i, f, g, o) or the
    GRU (r, z, n; b_hn inside r (h W_hn^T + b_hn)), torch's equations, h_{-1} = c_{-1} = 0, loss
    0.5 ||h_{T-1}||^2. Returns log10 of ||dL/dW_hh||, ||dL/dW_ih||, ||dL/db_ih||, ||dL/db_hh||
    (keys "W_hh", "W_ih", "b_ih", "b_hh"; -inf for a gradient of zeros): the sums over the
    steps and samples of dz_t^T h_{t-1}, dz_t^T x_t and dz_t, at any magnitude."""
    T, B, D = len(X), len(X[0]), len(X[0][0])
    N = len(W_hh[0])
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    mpf = lambda v: mp.mpf(float(v))  # noqa: E731
    Wi, Wh = [[mpf(v) for v in row] for row in W_ih], [[mpf(v) for v in row] for row in W_hh]
    bi, bh = [mpf(v) for v in b_ih], [mpf(v) for v in b_hh]
    p = mpf(p)
    sig = lambda z: 1 / (1 + mp.exp(-z))  # noqa: E731
    dsig = lambda z: dphi("sigmoid", z, 0)  # noqa: E731
    x = [[[mpf(v) for v in row] for row in X[t]] for t in range(T)]
    H, C, S = [[[mp.mpf(0)] * N for _ in range(B)]], [[[mp.mpf(0)] * N for _ in range(B)]], []
    for t in range(T):
        hs, cs, saved = [], [], []
        for r in range(B):
            hp = H[-1][r]
            ui = [mp.fsum([bi[i]] + [x[t][r][k] * Wi[i][k] for k in range(D)]) for i in range(G * N)]
            uh = [mp.fsum([bh[i]] + [hp[k] * Wh[i][k] for k in range(N)]) for i in range(G * N)]
            if cell == "rnn":
                z = [ui[i] + uh[i] for i in range(N)]
                hs.append([phi(activation, v, p) for v in z])
                saved.append(z)
            elif cell == "lstm":
                z = [ui[i] + uh[i] for i in range(4 * N)]
                c = [sig(z[N + j]) * C[-1][r][j] + sig(z[j]) * mp.tanh(z[2 * N + j]) for j in range(N)]
                cs.append(c)
                hs.append([sig(z[3 * N + j]) * mp.tanh(c[j]) for j in range(N)])
                saved.append(z)
            else:
                h, keep = _gru_cell(ui, uh, hp, N, sig)
                hs.append(h)
                saved.append(keep)
        H.append(hs)
        C.append(cs)
        S.append(saved)
    g = [row[:] for row in H[-1]]
    gc = [[mp.mpf(0)] * N for _ in range(B)]
    dWh = [[mp.mpf(0)] * N for _ in range(G * N)]
    dWi = [[mp.mpf(0)] * D for _ in range(G * N)]
    dbi, dbh = [mp.mpf(0)] * (G * N), [mp.mpf(0)] * (G * N)
    for t in range(T - 1, -1, -1):
        ng, ngc = [], []
        for r in range(B):
            hp = H[t][r]
            if cell == "rnn":
                z = S[t][r]
                dx = [g[r][i] * dphi(activation, z[i], p) for i in range(N)]
                dh = dx
                ng.append([mp.fsum(dh[i] * Wh[i][k] for i in range(N)) for k in range(N)])
            elif cell == "lstm":
                z, c, cp = S[t][r], C[t + 1][r], C[t][r]
                dc = [gc[r][j] + g[r][j] * sig(z[3 * N + j]) * mp.sech(c[j]) ** 2 for j in range(N)]
                dx = ([dc[j] * mp.tanh(z[2 * N + j]) * dsig(z[j]) for j in range(N)]
                      + [dc[j] * cp[j] * dsig(z[N + j]) for j in range(N)]
                      + [dc[j] * sig(z[j]) * mp.sech(z[2 * N + j]) ** 2 for j in range(N)]
                      + [g[r][j] * mp.tanh(c[j]) * dsig(z[3 * N + j]) for j in range(N)])
                dh = dx
                ng.append([mp.fsum(dh[i] * Wh[i][k] for i in range(4 * N)) for k in range(N)])
                ngc.append([dc[j] * sig(z[N + j]) for j in range(N)])
            else:
                zr, zz, zn, hn = S[t][r]
                dn = [g[r][j] * sig(-zz[j]) * mp.sech(zn[j]) ** 2 for j in range(N)]
                dr = [dn[j] * hn[j] * dsig(zr[j]) for j in range(N)]
                du = [g[r][j] * (hp[j] - mp.tanh(zn[j])) * dsig(zz[j]) for j in range(N)]
                dx = dr + du + dn
                dh = dr + du + [dn[j] * sig(zr[j]) for j in range(N)]
                ng.append([g[r][k] * sig(zz[k]) + mp.fsum(dh[i] * Wh[i][k] for i in range(3 * N)) for k in range(N)])
            for i in range(G * N):
                for k in range(N):
                    dWh[i][k] += dh[i] * hp[k]
                for k in range(D):
                    dWi[i][k] += dx[i] * x[t][r][k]
                dbi[i] += dx[i]
                dbh[i] += dh[i]
        g, gc = ng, (ngc if cell == "lstm" else gc)
    return {"W_hh": _log10_norm(dWh), "W_ih": _log10_norm(dWi), "b_ih": _log10_norm([dbi]), "b_hh": _log10_norm([dbh])}
