"""Numba-specific checks: the kernels' Python bodies once under NUMBA_DISABLE_JIT=1 (the layer
kernels are checked against the reference in tests/test_layers.py, with the C ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gradbench.kernels")


_NOJIT_SCRIPT = textwrap.dedent("""
    import json, numpy as np, gradbench as gb
    import numba
    assert numba.config.DISABLE_JIT
    out = []
    cases = [dict(activation=a) for a in gb.ACTIVATIONS] + [
        dict(activation="tanh", batch_norm=True, residual=2, clip="value", clip_threshold=1e-3),
        dict(activation="relu", init="he_normal", clip="norm", clip_threshold=1e-2),
        dict(activation="prelu", batch_norm=True),
        dict(activation="tanh", width=20, dtype="float32"),
    ]
    for kw in cases:
        st = gb.Stack(**(dict(depth=4, width=5) | kw))
        p = gb.init_params(st, 0)
        x = gb.gaussian_input(st, 3, 1)
        r = gb.backprop(st, p, x, backend="numpy")
        g = gb.backprop(st, p, x, backend="numba")
        def rel(a, b):
            a, b = a.to_float(warn=False), b.to_float(warn=False)
            return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
        out.append(dict(case=str(kw), dtype=st.dtype, W=rel(g.grads.W, r.grads.W),
                        signal=rel(g.signal_norm, r.signal_norm), std=rel(g.act_std, r.act_std),
                        sat=float(np.max(np.abs(g.saturation - r.saturation)))))
    print(json.dumps(out))
""")


def test_kernel_bodies_run_as_python_under_disable_jit():
    """The kernels' Python bodies (NUMBA_DISABLE_JIT=1) compute the reference's results too."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", _NOJIT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 14
    for row in rows:
        tol = 1e-12 if row["dtype"] == "float64" else 1e-4
        for k in ("W", "signal", "std"):
            assert row[k] <= tol, f"NUMBA_DISABLE_JIT: {row['case']}: {k} off by {row[k]:.3g}"
        assert row["sat"] == 0, row
