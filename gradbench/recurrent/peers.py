"""The torch peer of the recurrent cells: ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (eager autograd).

On the same parameters and input as gradbench: forward through the sequence, loss
0.5 ||h_{T-1}||^2, backward by autograd to every parameter (W_ih, W_hh, b_ih, b_hh). That is
all torch's module gives cheaply: the per-step norms ||dL/dh_t|| and ||step t's dW_hh term||
that a gradbench run reports need an unrolled LSTMCell loop with hooks in torch, so the
benchmark times torch doing less work than gradbench. Plain arithmetic: comparable only where
nothing under- or overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradbench.peers import _import
from gradbench.recurrent.params import RecurrentParams
from gradbench.recurrent.spec import Recurrent

_NAMES = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}


@dataclass(frozen=True)
class PeerResult:
    loss: float
    grads: dict  # name -> float64 array


def unsupported(rnn: Recurrent) -> str | None:
    if rnn.has_head:
        return "the torch peer implements the sum_squares probe only"
    if rnn.cell == "rnn" and rnn.act not in ("tanh", "relu"):
        return f"torch.nn.RNN has tanh and relu, not {rnn.act}"
    if rnn.clip is not None:
        return "the torch peer does not clip"
    return None


def prepare(rnn: Recurrent, params: RecurrentParams, xs: np.ndarray):
    """A function that runs torch once on (rnn, params, xs) and returns a PeerResult."""
    why = unsupported(rnn)
    if why:
        raise ValueError(why)
    torch, reason = _import("torch")
    if torch is None:
        raise RuntimeError(reason)
    dt = {"float64": torch.float64, "float32": torch.float32}[rnn.dtype]
    D, N = rnn.d_in, rnn.hidden
    if rnn.cell == "rnn":
        m = torch.nn.RNN(D, N, nonlinearity=rnn.act, dtype=dt)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[rnn.cell](D, N, dtype=dt)
    with torch.no_grad():
        for ours, theirs in _NAMES.items():
            getattr(m, theirs).copy_(torch.from_numpy(getattr(params, ours)))
    x = torch.from_numpy(np.ascontiguousarray(xs))

    def run() -> PeerResult:
        m.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out, _ = m(x)
            loss = 0.5 * (out[-1] * out[-1]).sum()
            loss.backward()
        return PeerResult(float(loss.detach()), {k: getattr(m, v).grad.numpy().astype(np.float64)
                                                 for k, v in _NAMES.items()})

    return run


def check(name: str, got: PeerResult, reference, rtol: float) -> None:
    """Raise AssertionError unless the peer's loss and gradients match the gradbench reference."""
    if not np.isclose(got.loss, reference.loss, rtol=rtol, atol=0):
        raise AssertionError(f"{name}: loss {got.loss!r} != reference {reference.loss!r}")
    for k, g in got.grads.items():
        want = getattr(reference.grads, k).to_float(warn=False)
        err = np.max(np.abs(g - want)) / max(np.max(np.abs(want)), 1e-300)
        if not err <= rtol:
            raise AssertionError(f"{name}: grads.{k} off by {err:.3g} of its largest entry (rtol {rtol})")
