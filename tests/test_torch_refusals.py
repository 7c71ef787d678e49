"""gb.from_torch on models whose weights or dtype need care: converted exactly, or refused naming
the parameter or module (never a raw torch/NumPy error, never silently coerced).

Reference values come from torch itself: its own dtype conversion (``model.double()``,
``.float()`` on a copy) and autograd in float64; gradbench's from ``gb.backprop`` (numpy backend).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed: pip install 'gradbench[torch]' (make test-all installs torch==2.13.0)")
from torch import nn  # noqa: E402

import gradbench as gb  # noqa: E402
from gradbench import cli  # noqa: E402
from gradbench.torch_io import Residual  # noqa: E402


def _torch_loss_and_grads(model, x):
    """0.5 * ||model(x)||^2 (gradbench's sum_squares) and d/d every weight, by torch autograd."""
    model.zero_grad()
    out = model(torch.tensor(x))
    value = 0.5 * (out * out).sum()
    value.backward()
    return value.item(), [model[i].weight.grad.numpy().copy() for i in (0, 2)]


def test_a_bfloat16_model_converts_exactly_and_agrees_with_autograd():
    torch.manual_seed(0)
    bf = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stack, params = gb.from_torch(bf, "float64")  # raised TypeError: Got unsupported ScalarType BFloat16
    ref = copy.deepcopy(bf).double()  # torch's own conversion (bfloat16 -> float64 is exact)
    for l in (0, 1):
        np.testing.assert_array_equal(params.W[l], ref[2 * l].weight.detach().numpy())
        np.testing.assert_array_equal(params.b[l], ref[2 * l].bias.detach().numpy())
    x = np.random.default_rng(1).standard_normal((5, 4))
    res = gb.backprop(stack, params, x, backend="numpy")
    ref_loss, ref_grads = _torch_loss_and_grads(ref, x)
    assert abs(res.loss - ref_loss) <= 1e-12 * abs(ref_loss)
    got = dict(res.grads.items())["W"].to_float()
    for l in (0, 1):
        err = np.max(np.abs(got[l] - ref_grads[l]))
        assert err <= 1e-12 * np.max(np.abs(ref_grads[l])), (l, err)
    _, p32 = gb.from_torch(bf, "float32")
    np.testing.assert_array_equal(p32.W[0], copy.deepcopy(bf).float()[0].weight.detach().numpy())


def test_a_bfloat16_model_runs_in_the_cli_with_dtype(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Tanh()).to(torch.bfloat16), tmp_path / "bf16.pt")
    code = cli.main(["run", "--torch", str(tmp_path / "bf16.pt"), "--dtype", "float64", "--backend", "numpy"])
    err = capsys.readouterr().err
    assert code == 0, err  # was "internal error: TypeError", exit 1


def test_a_nan_weight_is_refused_naming_the_parameter_and_index(tmp_path, capsys):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()).double()
    with torch.no_grad():
        m[2].weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"2\.weight contains nan \(first at index \(1, 1\)\)"):
        gb.from_torch(m)
    with torch.no_grad():
        m[2].weight[1, 1] = 0.5
        m[0].bias[3] = -float("inf")
    with pytest.raises(ValueError, match=r"0\.bias contains -inf \(first at index \(3,\)\)"):
        gb.from_torch(m)
    torch.save(m, tmp_path / "inf.pt")
    code = cli.main(["run", "--torch", str(tmp_path / "inf.pt"), "--backend", "numpy"])
    err = capsys.readouterr().err
    assert code == 2 and "0.bias contains -inf" in err and "internal error" not in err, err


def test_a_weight_beyond_float32_is_refused_not_made_inf(tmp_path, capsys):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()
    with torch.no_grad():
        m[0].weight[0, 2] = 1e39
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's "overflow encountered in cast" was all that was said
        with pytest.raises(ValueError, match=r"0\.weight holds 1e\+39 at index \(0, 2\), beyond float32's range "
                                             r"\(magnitudes up to 3\.4028235e\+38\)"):
            gb.from_torch(m, "float32")
        _, params = gb.from_torch(m)  # float64 holds it
    assert params.W[0, 0, 2] == 1e39
    # torch's own float32 conversion makes it inf: what gradbench now refuses
    assert torch.isinf(copy.deepcopy(m).float()[0].weight[0, 2])
    torch.save(m, tmp_path / "big.pt")
    code = cli.main(["run", "--torch", str(tmp_path / "big.pt"), "--dtype", "float32", "--backend", "numpy"])
    err = capsys.readouterr().err
    assert code == 2 and "0.weight holds 1e+39" in err, err


def test_a_weight_below_float32_is_refused_not_made_zero():
    """A float64 weight of 1e-50 became 0 in float32 without a word (torch's own .float() too)."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()
    with torch.no_grad():
        m[0].weight[1, 3] = 1e-50
    assert copy.deepcopy(m).float()[0].weight[1, 3] == 0
    with pytest.raises(ValueError, match=r"0\.weight holds 1e-50 at index \(1, 3\), below float32's smallest number"):
        gb.from_torch(m, "float32")
    assert gb.from_torch(m)[1].W[0, 1, 3] == 1e-50
    with torch.no_grad():
        m[0].weight[1, 3] = 1e-40  # a float32 subnormal: kept, rounded as float32 holds it
    assert gb.from_torch(m, "float32")[1].W[0, 1, 3] == np.float32(1e-40)


@pytest.mark.parametrize("dtype", [np.float32, np.dtype("float32"), torch.float32, "float32"])
def test_numpy_and_torch_dtypes_are_accepted_as_gb_stack_accepts_them(dtype):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()
    stack, params = gb.from_torch(m, dtype=dtype)
    assert stack.dtype == "float32" and stack == gb.Stack(depth=1, width=4, activation="tanh", dtype="float32")
    ref = copy.deepcopy(m).float()  # torch's own conversion
    np.testing.assert_array_equal(params.W[0], ref[0].weight.detach().numpy())


@pytest.mark.parametrize("dtype", [np.float64, torch.float64])
def test_float64_as_numpy_or_torch_dtype(dtype):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    assert gb.from_torch(m, dtype=dtype)[0].dtype == "float64"


@pytest.mark.parametrize("dtype,shown", [(torch.float16, "torch.float16"), (np.int32, "numpy.int32"),
                                         (np.dtype("float16"), "float16")])
def test_other_dtypes_are_refused_saying_what_was_given_and_how_to_spell_it(dtype, shown):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with pytest.raises(ValueError) as e:
        gb.from_torch(m, dtype=dtype)
    msg = str(e.value)
    assert shown in msg and "'float64', 'float32'" in msg and "np.float32" in msg and "torch.float32" in msg, msg


def _blocks(n=2, bn=False):
    out = []
    for _ in range(n):
        out += [nn.Linear(4, 4)] + ([nn.BatchNorm1d(4, eps=0.0)] if bn else []) + [nn.Tanh()]
    return out


@pytest.mark.parametrize("make,message", [
    (lambda: nn.Sequential(*_blocks(2, bn=True)), r"BatchNorm1d\(4\) at '1': bn_eps must be > 0, got 0\.0"),
    (lambda: nn.Sequential(Residual(nn.Sequential(*_blocks(1)), float("nan")),
                           Residual(nn.Sequential(*_blocks(1)), float("nan"))),
     r"Residual\(scale=nan\) at '0': residual_scale must be finite"),
    (lambda: nn.Sequential(*_blocks(2), nn.Linear(4, 1)),
     r"Linear\(4, 1\) at '4': loss='softmax_ce' needs output_dim >= 2"),
])
def test_stack_refusals_name_the_module(make, message):
    with pytest.raises(ValueError, match=message):
        gb.from_torch(make(), loss="softmax_ce" if "softmax" in message else None)


def test_a_meta_model_is_refused_naming_the_parameter_and_device():
    m = nn.Sequential(nn.Linear(4, 4, device="meta"), nn.Tanh())
    with pytest.raises(ValueError, match=r"0\.weight is on the meta device, which holds no values"):
        gb.from_torch(m)  # was NotImplementedError: Cannot copy out of meta tensor
    assert m[0].weight.device.type == "meta"  # nothing moved


def test_a_cuda_tensor_is_refused_not_moved():
    # no CUDA device here: a stand-in with a CUDA device, which _np looks at before any value
    from types import SimpleNamespace

    from gradbench.torch_model import _np, _Refused

    fake = SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(_Refused, match=r"3\.weight is on device 'cuda:0': the model must be on the CPU; move it "
                                       r"yourself with model\.cpu\(\)"):
        _np(fake, "float64", "3.weight")
