"""PyTorch in and out: round trips are bitwise, imported models agree with torch autograd.

The models are built with torch's own constructors and initialisers (independent of
``to_torch``); the reference values are torch's forward and ``.grad`` in float64, and
gradbench's come from ``gb.backprop`` on the imported stack (numpy backend, the reference).
"""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed: pip install 'gradbench[torch]' (make test-all installs torch==2.13.0)")
from torch import nn  # noqa: E402

import gradbench as gb  # noqa: E402
from gradbench import torch_io  # noqa: E402
from gradbench.torch_io import Residual  # noqa: E402

RTOL = 1e-12  # float64: loss and every gradient, max|got - ref| <= RTOL * max|ref| per array

ACTIVATION_MODULES = {
    "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2), "prelu": nn.PReLU, "elu": lambda: nn.ELU(0.7),
    "selu": nn.SELU, "swish": nn.SiLU, "gelu": nn.GELU,
}


# ------------------------------------------------------------------ round trips
ROUND_TRIP = [
    dict(activation=a) for a in gb.ACTIVATIONS
] + [
    dict(activation="leaky_relu", activation_param=0.3, batch_norm=True, bn_eps=1e-3),
    dict(activation="elu", activation_param=0.5, residual=2, residual_scale=0.25),
    dict(activation="tanh", batch_norm=True, residual=1, input_dim=3, loss="mse", output_dim=2),
    dict(activation="relu", input_dim=5, loss="softmax_ce", output_dim=4),
    dict(activation="sigmoid", input_dim=2, loss="bce", output_dim=1, dtype="float32"),
    dict(activation="prelu", activation_param=0.1, batch_norm=True, residual=3, loss="bce", dtype="float32"),
]


@pytest.mark.parametrize("kw", ROUND_TRIP, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_round_trip_to_torch_from_torch_is_bitwise(kw):
    stack = gb.Stack(depth=6, width=5, sigma_b=0.3, **kw)
    params = gb.init_params(stack, seed=4)
    if stack.batch_norm:  # gamma and beta away from their initial 1 and 0
        rng = np.random.default_rng(1)
        params.gamma[...] = rng.uniform(0.5, 1.5, params.gamma.shape)
        params.beta[...] = rng.normal(0, 0.3, params.beta.shape)
    if stack.activation == "prelu":
        params.slope[...] = np.linspace(-0.3, 0.6, stack.depth)
    model = gb.to_torch(stack, params)
    assert isinstance(model, nn.Sequential) and model.training
    assert all(p.dtype == getattr(torch, stack.dtype) for p in model.parameters())
    back, got = gb.from_torch(model, loss=stack.loss if stack.has_head else None)
    for name, a in params.items():
        b = getattr(got, name)
        assert b is not None and b.dtype == a.dtype, name
        assert a.tobytes() == b.tobytes(), f"params.{name} changed in the round trip"
    for f in ("depth", "width", "activation", "act_param", "batch_norm", "bn_eps", "residual", "residual_scale",
              "loss", "d_in", "output_dim", "dtype"):
        assert getattr(back, f) == getattr(stack, f), f


def test_to_torch_computes_what_gradbench_computes():
    """The exported model's loss equals gradbench's (float64) on a stack with every part."""
    stack = gb.Stack(depth=6, width=7, activation="swish", batch_norm=True, residual=2, residual_scale=0.5,
                     input_dim=3, loss="softmax_ce", output_dim=3, sigma_b=0.2)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 9, 1)
    t = np.random.default_rng(2).integers(0, 3, 9)
    model = gb.to_torch(stack, params)
    ref = torch_io.loss_fn(stack)(model(torch.tensor(x)), torch.tensor(t)).item()
    assert gb.backprop(stack, params, x, t, backend="numpy").loss == pytest.approx(ref, rel=RTOL)


def test_to_torch_refuses_what_a_module_cannot_hold():
    stack = gb.Stack(depth=2, width=3, clip="norm", clip_on="signal")
    with pytest.raises(ValueError, match="clip='norm'.*no nn.Module counterpart"):
        gb.to_torch(stack, gb.init_params(stack, 0))
    stack = gb.Stack(depth=2, width=3)
    with pytest.raises(ValueError, match="params.W has shape"):
        gb.to_torch(stack, gb.init_params(gb.Stack(depth=3, width=3), 0))
    with pytest.raises(TypeError, match="params must be gradbench.Params or GeneratedParams"):
        gb.to_torch(stack, {"W": None})


def test_generated_weights_export_as_they_are_generated():
    from gradbench.params import GeneratedParams

    stack = gb.Stack(depth=5, width=4, activation="tanh", sigma_b=0.1, input_dim=2, loss="mse")
    gen = GeneratedParams(stack, 3)
    _, back = gb.from_torch(gb.to_torch(stack, gen), loss="mse")
    assert back.W.tobytes() == gen.weights(0, 5).tobytes() and back.b.tobytes() == gen.biases(0, 5).tobytes()
    with pytest.raises(ValueError, match="different stack"):
        gb.to_torch(stack.replace(depth=4), gen)


# ------------------------------------------------------------------ torch-built models vs autograd
def build(activation="tanh", depth=4, width=6, d_in=None, d_out=None, batch_norm=False, residual=0, scale=1.0,
          bias=True, affine=True, seed=0):
    """A model made with torch's constructors and default init; returns it and its parameters by role."""
    torch.manual_seed(seed)
    lin = [nn.Linear(width, width, bias=bias, dtype=torch.float64) for _ in range(depth)]
    bns = [nn.BatchNorm1d(width, affine=affine, dtype=torch.float64) for _ in range(depth)] if batch_norm else []
    acts = [ACTIVATION_MODULES[activation]().double() for _ in range(depth)]
    if activation == "prelu":
        with torch.no_grad():
            for l, a in enumerate(acts):
                a.weight.fill_(-0.2 + 0.15 * l)
    if bns and affine:
        with torch.no_grad():
            for bn in bns:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0.0, 0.3)
    blocks = [[lin[l]] + ([bns[l]] if bns else []) + [acts[l]] for l in range(depth)]
    body: list[nn.Module] = []
    if residual:
        for g in range(0, depth, residual):
            body.append(Residual(nn.Sequential(*[m for b in blocks[g:g + residual] for m in b]), scale))
    else:
        body = [m for b in blocks for m in b]
    inp = nn.Linear(d_in, width, dtype=torch.float64) if d_in else None
    head = nn.Linear(width, d_out, dtype=torch.float64) if d_out else None
    model = nn.Sequential(*([inp] if inp else []), *body, *([head] if head else []))
    roles = {"W": [m.weight for m in lin]}
    if bias:
        roles["b"] = [m.bias for m in lin]
    if bns and affine:
        roles["gamma"] = [m.weight for m in bns]
        roles["beta"] = [m.bias for m in bns]
    if activation == "prelu":
        roles["slope"] = [a.weight for a in acts]
    if inp:
        roles["W_in"], roles["b_in"] = [inp.weight], [inp.bias]
    if head:
        roles["W_out"], roles["b_out"] = [head.weight], [head.bias]
    return model, roles


def targets(loss, batch, d_out, seed=5):
    rng = np.random.default_rng(seed)
    if loss == "mse":
        return rng.standard_normal((batch, d_out))
    if loss == "bce":
        return rng.integers(0, 2, (batch, d_out)).astype(np.float64)
    if loss == "softmax_ce":
        return rng.integers(0, d_out, batch)
    return None


def torch_reference(model, x, t, loss):
    fn = {"mse": nn.MSELoss(), "bce": nn.BCEWithLogitsLoss(), "softmax_ce": nn.CrossEntropyLoss()}.get(loss)
    model.zero_grad()
    out = model(torch.tensor(x))
    value = fn(out, torch.tensor(t)) if fn else 0.5 * (out * out).sum()
    value.backward()
    return value.item()


def assert_agree(model, roles, loss, batch=10, d_in=6, d_out=None, seed=1):
    """gb.backprop on the imported model == torch autograd: the loss and every gradient."""
    stack, params = gb.from_torch(model, loss=loss)
    x = np.random.default_rng(seed).standard_normal((batch, d_in))
    t = targets(loss, batch, d_out)
    res = gb.backprop(stack, params, x, t, backend="numpy")
    ref_loss = torch_reference(model, x, t, loss)
    assert abs(res.loss - ref_loss) <= RTOL * abs(ref_loss), (res.loss, ref_loss)
    grads = dict(res.grads.items())
    compared = 0
    for name, tensors in roles.items():
        got_all = grads[name].to_float()
        for l, p in enumerate(tensors):
            ref = p.grad.detach().numpy().reshape(-1)
            got = (got_all[l] if name not in ("W_in", "b_in", "W_out", "b_out") else got_all).reshape(-1)
            scale = np.max(np.abs(ref))
            err = np.max(np.abs(got - ref))
            if stack.batch_norm and (name == "b" or (name == "b_in" and not stack.residual)):
                # dL/db_l (and dL/db_in) is exactly 0 under batch norm, which subtracts the batch
                # mean (b_in: unless a skip path carries it): both sides are rounding noise, bounded
                # relative to the layer's dL/dbeta
                bound = RTOL * np.max(np.abs(grads["beta"].to_float()[l]))
                assert max(np.max(np.abs(got)), np.max(np.abs(ref))) <= bound, f"d loss / d {name}[{l}] under batch norm"
                compared += 1
                continue
            assert scale > 0, f"{name}[{l}]: torch's gradient is zero, the test would compare nothing"
            assert err <= RTOL * scale, (
                f"d loss / d {name}[{l}]: max |gradbench - torch| = {err:.3g}, {err / scale:.3g} of max|torch| "
                f"(index {int(np.argmax(np.abs(got - ref)))})")
            compared += 1
    assert compared >= len(roles)
    return stack


@pytest.mark.parametrize("activation", list(ACTIVATION_MODULES))
def test_each_activation_module_agrees_with_autograd(activation):
    model, roles = build(activation, d_in=3, d_out=2)
    stack = assert_agree(model, roles, "mse", d_in=3, d_out=2)
    assert stack.activation == activation
    if activation == "leaky_relu":
        assert stack.act_param == 0.2
    if activation == "elu":
        assert stack.act_param == 0.7


@pytest.mark.parametrize("loss,d_out", [(None, None), ("mse", 3), ("bce", 1), ("softmax_ce", 4)])
def test_each_loss_agrees_with_autograd(loss, d_out):
    model, roles = build("tanh", d_out=d_out)
    stack = assert_agree(model, roles, loss, d_out=d_out)
    assert stack.loss == (loss or "sum_squares")


def test_loss_can_be_given_as_a_torch_module():
    model, _ = build("relu", d_out=3)
    assert gb.from_torch(model, loss=nn.CrossEntropyLoss())[0].loss == "softmax_ce"
    with pytest.raises(ValueError, match="reduction='sum'"):
        gb.from_torch(model, loss=nn.MSELoss(reduction="sum"))


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "prelu"])
def test_batch_norm_blocks_agree_with_autograd(activation):
    model, roles = build(activation, batch_norm=True, d_in=4, d_out=2)
    stack = assert_agree(model, roles, "bce", d_in=4, d_out=2)
    assert stack.batch_norm and stack.bn_eps == 1e-5


@pytest.mark.filterwarnings("ignore:from_torch. the model holds fixed")  # named there, expected here
def test_batch_norm_without_affine_or_running_stats_agrees_with_autograd():
    model, roles = build("tanh", batch_norm=True, affine=False, d_out=2)
    assert_agree(model, roles, "mse", d_out=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6, dtype=torch.float64),
                          nn.BatchNorm1d(6, track_running_stats=False, dtype=torch.float64), nn.Tanh(),
                          nn.Linear(6, 2, dtype=torch.float64)).eval()  # eval, but batch statistics
    roles = {"W": [model[0].weight], "b": [model[0].bias], "gamma": [model[1].weight], "beta": [model[1].bias]}
    assert_agree(model, roles, "mse", d_out=2)


@pytest.mark.parametrize("k,scale,bn", [(1, 1.0, False), (2, 0.5, False), (3, 1.0, True)])
def test_residual_groups_agree_with_autograd(k, scale, bn):
    model, roles = build("gelu", depth=6, residual=k, scale=scale, batch_norm=bn, d_in=3, d_out=2)
    stack = assert_agree(model, roles, "mse", d_in=3, d_out=2)
    assert stack.residual == k and stack.residual_scale == scale


@pytest.mark.filterwarnings("ignore:from_torch. the model holds fixed")  # named there, expected here
def test_linear_layers_without_bias_agree_with_autograd():
    model, roles = build("elu", bias=False, d_out=2)
    stack, params = gb.from_torch(model, loss="mse")
    assert not np.any(params.b)
    assert_agree(model, roles, "mse", d_out=2)


def test_nested_sequential_and_a_module_whose_forward_is_one():
    inner, roles = build("sigmoid", d_out=1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = inner

        def forward(self, x):
            return self.net(x)

    assert_agree(Net(), roles, "bce", d_out=1)
    nested = nn.Sequential(nn.Sequential(*list(inner)[:4]), nn.Sequential(*list(inner)[4:]))
    assert_agree(nested, roles, "bce", d_out=1)


def test_dtype_is_kept_or_chosen():
    model, _ = build("tanh")
    assert gb.from_torch(model)[0].dtype == "float64"
    stack, params = gb.from_torch(model, dtype="float32")
    assert stack.dtype == "float32" and params.W.dtype == np.float32
    assert gb.from_torch(model.float())[0].dtype == "float32"
    with pytest.raises(ValueError, match="dtype='float16' is not one of"):
        gb.from_torch(model, dtype="float16")
    with pytest.raises(ValueError, match=r"dtype\(s\) \['torch.float16'\]"):
        gb.from_torch(model.half())


# ------------------------------------------------------------------ refused, with the reason
def _seq(*modules):
    return nn.Sequential(*modules).double()


UNSUPPORTED = [
    ("dropout", lambda: _seq(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 4), nn.ReLU()),
     r"Dropout at '2': Dropout is not supported"),
    ("width change", lambda: _seq(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 128), nn.Tanh(),
                                  nn.Linear(128, 128), nn.Tanh()),
     r"Linear\(256, 128\) at '2': widths must be uniform inside the stack"),
    ("bn eval", lambda: _seq(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh()).eval(),
     r"BatchNorm1d\(4\) at '1' is in eval mode .*batch statistics"),
    ("mixed activations", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU()),
     r"ReLU at '3': activations must be the same in every layer \(the first is Tanh at '1'\)"),
    ("leaky slopes differ", lambda: _seq(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.2)),
     r"LeakyReLU\(0\.2\) at '3': activations must be the same"),
    ("gelu tanh", lambda: _seq(nn.Linear(4, 4), nn.GELU(approximate="tanh")),
     r"GELU at '1': GELU\(approximate='tanh'\) is not gradbench's gelu"),
    ("prelu per unit", lambda: _seq(nn.Linear(4, 4), nn.PReLU(4)),
     r"PReLU\(num_parameters=4\) has one slope per unit"),
    ("layernorm", lambda: _seq(nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh()),
     r"LayerNorm at '1': LayerNorm has no gradbench counterpart"),
    ("softplus", lambda: _seq(nn.Linear(4, 4), nn.Softplus()),
     r"Softplus at '1': Softplus has no gradbench counterpart"),
    ("batchnorm2d", lambda: _seq(nn.Linear(4, 4), nn.BatchNorm2d(4), nn.Tanh()),
     r"BatchNorm2d at '1': BatchNorm2d is not supported"),
    ("no activation", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 4), nn.Tanh()),
     r"Linear\(4, 4\) at '3' follows Linear\(4, 4\) at '2' without an activation"),
    ("bn not everywhere", lambda: _seq(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()),
     r"Linear\(4, 4\) at '3': batch norm must follow every Linear\(N, N\) or none"),
    ("bn eps differ", lambda: _seq(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 4),
                                   nn.BatchNorm1d(4, eps=1e-3), nn.Tanh()),
     r"BatchNorm1d\(4\) at '4': eps=0.001 differs"),
    ("input with activation", lambda: _seq(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()),
     r"Linear\(2, 4\) at '0' is followed by ReLU: gradbench's input layer \(D -> N\) is linear"),
    ("square input layer", lambda: _seq(nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()),
     r"input layer of the stack's own width"),
    ("mixed residual", lambda: _seq(Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())), nn.Linear(4, 4), nn.ReLU()),
     r"residual groups and plain blocks are mixed"),
    ("residual sizes", lambda: _seq(Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())),
                                    Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU()))),
     r"Residual\(scale=1.0\) at '1' holds 2 blocks, the first group 1"),
    ("residual scales", lambda: _seq(Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())),
                                     Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), 0.5)),
     r"residual scales must be equal"),
    ("conv", lambda: _seq(nn.Conv1d(1, 1, 3)), r"Conv1d at '0': Conv1d has no gradbench counterpart"),
    # each names the module, what was expected there and what to use
    ("nested residual", lambda: _seq(Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU(),
                                                            Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))))),
     r"Residual\(scale=1.0\) at '0.body.2': a Residual inside a Residual's body \('0'\) is not supported: "
     r"a group's body is a chain of blocks Linear\(N, N\) \[BatchNorm1d\(N\)\] activation; place the groups one "
     r"after the other"),
    ("empty residual", lambda: _seq(Residual(nn.Sequential())), r"Residual\(scale=1.0\) at '0': its body is empty"),
    ("empty", lambda: nn.Sequential(), r"the model has no modules: gradbench needs at least one block"),
    ("only a square linear", lambda: _seq(nn.Linear(4, 4)),
     r"Linear\(4, 4\) at '0': a model with no block .* put an activation after it \(nn.Identity\(\)"),
    ("only an input linear", lambda: _seq(nn.Linear(2, 4)),
     r"Linear\(2, 4\) at '0': a model with no block .* put blocks Linear\(4, 4\) \[BatchNorm1d\] activation after it"),
    ("input and head only", lambda: _seq(nn.Linear(2, 4), nn.Linear(4, 3)),
     r"Linear\(4, 3\) at '1' follows the input layer Linear\(2, 4\) at '0' with no block between them: put blocks "
     r"Linear\(4, 4\)"),
    ("square input then block", lambda: _seq(nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()),
     r"input layer of the stack's own width: .*; to make it a block, put an activation after it"),
    ("width change in the middle", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(),
                                                nn.Linear(5, 5), nn.Tanh()),
     r"Linear\(4, 5\) at '2': widths must be uniform inside the stack: expected Linear\(4, 4\) here"),
    ("head not last", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Linear(2, 2), nn.Tanh()),
     r"Linear\(4, 2\) at '2': .*expected Linear\(4, 4\) here.*a head Linear\(N, O\) can only be the model's last"),
    ("two activations", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()),
     r"Tanh at '2': expected a Linear here, after Tanh at '1', which ends a block .*one activation per block"),
    ("activation first", lambda: _seq(nn.Tanh(), nn.Linear(4, 4), nn.Tanh()),
     r"Tanh at '0': expected a Linear here, at the start of the model .*remove it or put a Linear\(N, N\) before it"),
    ("batchnorm first", lambda: _seq(nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Tanh()),
     r"BatchNorm1d\(4\) at '0': expected a Linear here, at the start of the model .*a BatchNorm1d goes between a "
     r"block's Linear and its activation"),
    ("dropout in eval mode",
     lambda: _seq(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 4), nn.ReLU()).eval(),
     r"Dropout at '2': Dropout is not supported, in eval mode either .*remove it from the model, which then computes"),
    ("softmax after the head", lambda: _seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3), nn.Softmax(dim=1)),
     r"Softmax at '3': Softmax is not supported: gradbench's softmax_ce loss applies the softmax itself"),
]


@pytest.mark.parametrize("make,message", [u[1:] for u in UNSUPPORTED], ids=[u[0] for u in UNSUPPORTED])
def test_every_unsupported_module_is_refused_with_its_reason(make, message):
    with pytest.raises(ValueError, match=message) as info:
        gb.from_torch(make())
    assert str(info.value).startswith("cannot map the model to a gradbench stack: ")
    assert "\n" not in str(info.value)


NO_PARAMETERS = [
    ("an activation", lambda: nn.Sequential(nn.Tanh()),
     r"Tanh at '0': expected a Linear here, at the start of the model"),
    ("a residual holding an activation", lambda: nn.Sequential(Residual(nn.Sequential(nn.Tanh()))),
     r"Tanh at '0.body.0': expected a Linear here, at the start of the body of the Residual at '0'"),
    ("buffers only", lambda: nn.Sequential(nn.BatchNorm1d(4, affine=False)),
     r"BatchNorm1d\(4\) at '0': expected a Linear here"),
]


@pytest.mark.parametrize("make,message", [u[1:] for u in NO_PARAMETERS], ids=[u[0] for u in NO_PARAMETERS])
def test_a_model_without_parameters_gets_the_structural_reason(make, message):
    """Was: "the model's parameters have dtype(s) []; pass dtype='float64'...", and with that dtype
    the structural reason; the structure is checked first (with a dtype or without, the same)."""
    for dtype in (None, "float64"):
        with pytest.raises(ValueError, match=message) as info:
            gb.from_torch(make(), dtype)
        assert "dtype" not in str(info.value)


def test_the_structure_is_refused_before_the_dtype_and_the_module_kind_before_the_structure():
    with pytest.raises(ValueError, match=r"LayerNorm at '1': LayerNorm has no gradbench counterpart"):
        gb.from_torch(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Tanh()).half())
    with pytest.raises(ValueError, match=r"Tanh at '0': expected a Linear here"):
        gb.from_torch(nn.Sequential(nn.Tanh(), nn.Linear(4, 4), nn.Tanh()).half())
    # a Dropout is named before the width change that comes first in the model
    with pytest.raises(ValueError, match=r"Dropout at '4': Dropout is not supported"):
        gb.from_torch(_seq(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.1)))
    # a valid structure in a dtype gradbench does not have still gets the dtype message
    with pytest.raises(ValueError, match=r"dtype\(s\) \['torch.float16'\]; pass dtype="):
        gb.from_torch(nn.Sequential(nn.Linear(4, 4), nn.Tanh()).half())


def test_a_head_needs_a_loss_and_a_loss_needs_a_head():
    model, _ = build("tanh", d_out=2)
    with pytest.raises(ValueError, match=r"ends in a head Linear\(6, 2\) at '8': give loss="):
        gb.from_torch(model)
    with pytest.raises(ValueError, match="loss='sum_squares' is 0.5"):
        gb.from_torch(model, loss="sum_squares")
    plain, _ = build("tanh")
    with pytest.raises(ValueError, match=r"loss='mse' needs a head .*the model ends in Tanh at '7'"):
        gb.from_torch(plain, loss="mse")
    with pytest.raises(ValueError, match="did you mean 'mse'"):
        gb.from_torch(plain, loss="mes")


def test_a_forward_that_is_not_a_chain_is_refused():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.lin(x))

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = nn.Linear(4, 4), nn.Tanh()

        def forward(self, x):
            return x + self.act(self.lin(x))

    with pytest.raises(ValueError, match="Functional.forward calls relu outside a module"):
        gb.from_torch(Functional())
    with pytest.raises(ValueError, match=r"Skip.forward calls arithmetic \(add\) outside a module"):
        gb.from_torch(Skip())


def test_shared_weights_are_refused_and_a_shared_activation_is_applied_every_time():
    """nn.Sequential(*[block] * 5) was read as one layer (named_children yields an instance once):
    loss 2.87 where torch, applying the block 5 times, has 0.45. Shared parameters are refused;
    one activation module placed after every Linear is stateless and maps as placed."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    with pytest.raises(ValueError, match=r"1\.0\.weight is the same tensor as 0\.0\.weight \(shared weights\)"):
        gb.from_torch(nn.Sequential(*[block] * 5).double())
    lin = nn.Linear(6, 6)
    with pytest.raises(ValueError, match=r"2\.weight is the same tensor as 0\.weight"):
        gb.from_torch(nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh()).double())
    act = nn.Tanh()
    lins = [nn.Linear(6, 6) for _ in range(3)]
    model = nn.Sequential(lins[0], act, lins[1], act, lins[2], act).double()
    stack = assert_agree(model, {"W": [m.weight for m in lins], "b": [m.bias for m in lins]}, None)
    assert stack.depth == 3

    class Reused(nn.Module):  # the common idiom: one activation module called after each Linear
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.Tanh()

        def forward(self, x):
            return self.act(self.l2(self.act(self.l1(x))))

    net = Reused().double()  # it was refused: "uses module 'act' twice (shared weights)"
    assert assert_agree(net, {"W": [net.l1.weight, net.l2.weight], "b": [net.l1.bias, net.l2.bias]}, None).depth == 2

    class SharedLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.act = nn.Linear(6, 6), nn.Tanh()

        def forward(self, x):
            return self.act(self.lin(self.act(self.lin(x))))

    with pytest.raises(ValueError, match=r"SharedLinear.forward uses module 'lin' twice \(shared weights\)"):
        gb.from_torch(SharedLinear().double())


# ------------------------------------------------------------------ saved models
def test_a_saved_model_loads_weights_only_and_maps_back(tmp_path):
    stack = gb.Stack(depth=4, width=5, activation="prelu", batch_norm=True, residual=2, input_dim=3, loss="mse")
    params = gb.init_params(stack, 0)
    path = tmp_path / "model.pt"
    torch.save(gb.to_torch(stack, params), path)
    back, got = gb.from_torch(torch_io.load(path), loss="mse")
    assert back.residual == 2 and all(a.tobytes() == getattr(got, k).tobytes() for k, a in params.items())


def test_a_saved_file_with_other_classes_is_refused_before_it_runs(tmp_path):
    path = tmp_path / "dropout.pt"
    torch.save(nn.Sequential(nn.Linear(3, 3), nn.Dropout()), path)
    with pytest.raises(ValueError, match=r"holds torch.nn.modules.dropout.Dropout, which gradbench does not load.*"
                                         r"; remove the Dropout \(gradbench computes one deterministic pass\)"):
        torch_io.load(path)
    for cls in (nn.RNN, nn.LSTM, nn.GRU):  # a recurrent layer: how gradbench runs it (no generic refusal only)
        rec = tmp_path / f"{cls.__name__}.pt"
        torch.save(cls(2, 3), rec)
        with pytest.raises(ValueError, match=rf"holds torch.nn.modules.rnn.{cls.__name__}, which gradbench does not "
                                             r"load.*a recurrent layer runs as gb.Recurrent"):
            torch_io.load(rec)
    sd = tmp_path / "state.pt"
    torch.save(nn.Linear(3, 3).state_dict(), sd)
    with pytest.raises(ValueError, match="holds an OrderedDict, not a model"):
        torch_io.load(sd)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a model saved with torch.save"):
        torch_io.load(junk)


# ------------------------------------------------------------------ the adam demo in PyTorch
def test_pytorch_reproduces_the_adam_demo():
    """The deep sigmoid net trained with torch.optim.Adam (lr 1e-3, same init and batch order)."""
    from gradbench.train import DEMOS, targets_for

    demo = DEMOS["adam"]
    X, y = demo.data()
    stack = demo.make_stack()
    kw = demo.train
    model = gb.to_torch(stack, gb.init_params(stack, kw["seed"]))
    opt = torch.optim.Adam(model.parameters(), lr=kw["lr"])
    lossf = torch_io.loss_fn(stack)
    Xt, T = torch.tensor(X), torch.tensor(targets_for(stack, y))
    rng = np.random.default_rng([kw["seed"], 1])  # gb.train's shuffling
    for _ in range(kw["epochs"]):
        order = rng.permutation(len(X))
        for s in range(0, len(X), kw["batch_size"]):
            idx = torch.tensor(order[s:s + kw["batch_size"]])
            opt.zero_grad()
            lossf(model(Xt[idx]), T[idx]).backward()
            opt.step()
    with torch.no_grad():
        torch_loss = lossf(model(Xt), T).item()
    ours = gb.run_demo("adam").eval_loss[-1]
    assert 0.30 < torch_loss < 0.38 and torch_loss < math.log(2) - 0.3
    assert abs(ours - torch_loss) < 1e-10, (ours, torch_loss)  # README: "the same to 1e-10" (4.6e-14 here)


def test_import_without_torch_says_how_to_install(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    for name in ("gradbench.torch_io", "gradbench.torch_model"):  # both cached modules: import afresh
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r"pip install 'gradbench\[torch\]'"):
        importlib.import_module("gradbench.torch_io")
    for name in ("gradbench.torch_io", "gradbench.torch_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r"gradbench\[torch\]"):
        gb.from_torch(None)


def test_buffer_io_does_not_need_a_file():
    buf = io.BytesIO()
    torch.save(nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double(), buf)
    buf.seek(0)
    assert gb.from_torch(torch_io.load(buf))[0].depth == 1


def test_activation_values_are_named_with_the_module():
    """nn.ELU(alpha=0) was refused as 'activation_param (ELU alpha) must be > 0', without the
    module or 'cannot map the model'; two leaky slopes as two 'LeakyReLU's."""
    with pytest.raises(ValueError, match=r"cannot map the model to a gradbench stack: ELU\(alpha=0\) at '1': "
                                         r"activation_param must be > 0 for elu"):
        gb.from_torch(_seq(nn.Linear(4, 4), nn.ELU(alpha=0.0)))
    with pytest.raises(ValueError, match=r"LeakyReLU\(0\.2\) at '3': activations must be the same in every layer "
                                         r"\(the first is LeakyReLU\(0\.1\) at '1'\)"):
        gb.from_torch(_seq(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.2)))


class _ScaledTanh(nn.Tanh):
    def forward(self, x):
        return torch.tanh(2 * x)


class _ShiftedLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) + 1


class _PlainSubclass(nn.Tanh):  # keeps Tanh.forward: the same computation
    pass


def _hooked(pre: bool):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()
    if pre:
        m[0].register_forward_pre_hook(lambda mod, i: (i[0] * 0.1,))
    else:
        m[1].register_forward_hook(lambda mod, i, o: o * 3)
    return m


@pytest.mark.parametrize("make, words", [
    (lambda: nn.Sequential(nn.Linear(4, 4), _ScaledTanh()), "_ScaledTanh at '1' replaces Tanh.forward"),
    (lambda: nn.Sequential(_ShiftedLinear(4, 4), nn.Tanh()), "_ShiftedLinear at '0' replaces Linear.forward"),
    (lambda: _hooked(False), "Tanh at '1' has hooks (forward_hooks)"),
    (lambda: _hooked(True), "Linear at '0' has hooks (forward_pre_hooks)"),
])
def test_modules_that_compute_otherwise_than_their_kind_are_refused(make, words):
    """A subclass with its own forward, or a hook, was read as the plain module: the model's loss
    and gradbench's differed (tanh(2x): 17.19 against 7.79) without a word."""
    model = make().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    plain = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()
    plain.load_state_dict(model.state_dict())
    assert not torch.equal(model(x), plain(x))  # the model does compute something else
    with pytest.raises(ValueError, match=re.escape(words)):
        gb.from_torch(model)


def test_a_subclass_that_keeps_the_forward_is_mapped():
    model = nn.Sequential(nn.Linear(4, 4), _PlainSubclass()).double()
    stack, params = gb.from_torch(model)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert stack.activation == "tanh"
    assert gb.backprop(stack, params, x.numpy()).loss == pytest.approx((0.5 * (model(x) ** 2).sum()).item(), rel=1e-14)


def test_batch_norm_in_eval_with_running_buffers_is_refused_whatever_its_flag():
    """bn.eval(); bn.track_running_stats = False after construction: torch's forward still reads
    the running buffers (loss 7.29), gradbench took batch statistics (15.63)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh()).double().eval()
    model[1].track_running_stats = False
    with pytest.raises(ValueError, match="is in eval mode and would use its running statistics"):
        gb.from_torch(model)


def test_to_torch_batch_norm_is_the_same_in_eval_mode():
    """to_torch's BatchNorm1d had default running statistics (mean 0, variance 1): a trained
    net's loss went from 0.007 to 4.06 after model.eval()."""
    stack = gb.Stack(depth=3, width=6, batch_norm=True, activation="relu", init="he_normal", loss="mse", input_dim=2)
    params = gb.init_params(stack, 0)
    params.gamma[...] = 2.5
    params.beta[...] = -0.3
    x = np.random.default_rng(0).normal(size=(16, 2))
    t = np.random.default_rng(1).normal(size=(16, 1))
    want = gb.backprop(stack, params, x, t).loss
    model = gb.to_torch(stack, params)
    for mode in (model.train, model.eval):
        mode()
        got = gb.torch_io.loss_fn(stack)(model(torch.from_numpy(x)), torch.from_numpy(t)).item()
        assert got == pytest.approx(want, rel=1e-12)


def test_fixed_parameters_are_named_in_a_warning():
    """Frozen parameters, bias-free Linears and affine-free batch norms are trainable in gradbench:
    gb.train moved a frozen W_in by 0.016 and trained a bias-free layer's biases, in silence."""
    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8, affine=False), nn.Tanh(),
                          nn.Linear(8, 1)).double()
    model[0].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"from_torch: the model holds fixed 1\.bias \(none: zeros\), 2 affine=False "
                                         r"\(gamma 1, beta 0\), 0\.weight; gradbench makes every parameter trainable"):
        gb.from_torch(model, loss="bce")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gb.from_torch(nn.Sequential(nn.Linear(8, 8), nn.Tanh()).double())  # nothing fixed: no warning


def test_a_parametrized_weight_is_copied_as_computed_and_said():
    """spectral_norm (torch.nn.utils.parametrizations) was read in silence: gradbench copies the
    weight as computed at the call, and its dW is the gradient with respect to that weight (torch
    autograd on a plain Linear holding it), not weight_orig's .grad."""
    torch.manual_seed(0)
    sn = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8).double())
    model = nn.Sequential(sn, nn.Tanh(), nn.Linear(8, 8).double(), nn.Tanh())
    with pytest.warns(UserWarning, match=r"from_torch: 0\.weight is parametrized \(spectral_norm.*a snapshot"):
        gb.from_torch(model)
    a, b = sn.weight.detach().clone(), sn.weight.detach().clone()  # training mode: each read iterates
    assert not torch.equal(a, b)
    model.eval()  # no power iteration: one weight
    with pytest.warns(UserWarning, match="parametrized"):
        stack, params = gb.from_torch(model)
    now = sn.weight.detach().clone()
    assert np.array_equal(params.W[0], now.numpy())
    x = gb.gaussian_input(stack, 4, 1)
    res = gb.backprop(stack, params, x, backend="numpy")
    plain = nn.Linear(8, 8).double()
    with torch.no_grad():
        plain.weight.copy_(now)
        plain.bias.copy_(sn.bias)
    out = model[3](model[2](torch.tanh(plain(torch.from_numpy(x)))))
    (0.5 * (out ** 2).sum()).backward()
    dW = res.grads.W.mantissa[0] * 2.0 ** res.grads.W.exponent[0]
    np.testing.assert_allclose(dW, plain.weight.grad.numpy(), rtol=1e-12, atol=0)
    sn.zero_grad()
    out = model(torch.from_numpy(x))
    (0.5 * (out ** 2).sum()).backward()
    orig = sn.parametrizations.weight.original.grad.numpy()
    assert not np.allclose(orig, plain.weight.grad.numpy(), rtol=1e-3)


# ------------------------------------------------------------------ torch's recurrent layers
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_torch_recurrent_layer_is_refused_with_the_way_gradbench_runs_it(cell):
    # gb.from_torch(nn.LSTM(...)) raised torch.fx's "symbolically traced variables cannot be
    # used as inputs to control flow", and an nn.RNN inside an nn.Sequential read "RNN has no
    # gradbench counterpart", though gb.Recurrent is one. The refusal now says how to run it;
    # done as it says, the run agrees with torch's autograd on the module itself.
    torch.manual_seed(0)
    m = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](2, 3).double()
    for model in (m, nn.Sequential(m)):
        with pytest.raises(ValueError) as err:
            gb.from_torch(model)
        msg = str(err.value)
        assert "recurrent layer" in msg and f"gb.Recurrent(cell={cell!r}, steps=T, hidden=3, input_dim=2)" in msg
        assert "no gradbench counterpart" not in msg and "traced" not in msg
    a = lambda t: t.detach().numpy().copy()  # noqa: E731
    rnn = gb.Recurrent(cell=cell, steps=7, hidden=3, input_dim=2)
    p = gb.RecurrentParams(W_ih=a(m.weight_ih_l0), W_hh=a(m.weight_hh_l0), b_ih=a(m.bias_ih_l0),
                           b_hh=a(m.bias_hh_l0), origin=f"the weights of my {type(m).__name__}")
    xs = np.random.default_rng(1).normal(size=(7, 4, 2))
    res = gb.backprop(rnn, p, xs, backend="numpy")
    out, _ = m(torch.tensor(xs))
    loss = 0.5 * (out[-1] ** 2).sum()  # gradbench's probe: 0.5 ||h_{T-1}||^2
    loss.backward()
    assert abs(res.loss - loss.item()) <= RTOL * abs(loss.item())
    ref = m.weight_hh_l0.grad.numpy()
    assert np.max(np.abs(res.grads.W_hh.to_float() - ref)) <= RTOL * np.max(np.abs(ref))
    assert f"input dim 2, the weights of my {type(m).__name__}, float64" in str(gb.diagnose(res)).splitlines()[0]


def test_a_sigmoid_after_the_head_is_refused_as_that_and_the_fix_it_names_gives_bce_loss():
    # nn.Sequential(..., nn.Linear(N, 1), nn.Sigmoid()) for nn.BCELoss was refused with "Linear(8, 1)
    # at '2': widths must be uniform inside the stack", which names neither the Sigmoid nor that
    # bce takes logits. Done as the message now says, the loss is nn.BCELoss of the whole model.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 1), nn.Sigmoid()).double()
    with pytest.raises(ValueError, match=r"Sigmoid at '6' follows the head Linear\(8, 1\) at '5' .*remove the "
                                         r"Sigmoid and pass loss='bce'") as err:
        gb.from_torch(model, loss="bce")
    assert "widths must be uniform" not in str(err.value)
    with pytest.raises(ValueError, match=r"Tanh at '6' follows the head Linear\(8, 1\) at '5' .*remove it"):
        gb.from_torch(nn.Sequential(*model[:6], nn.Tanh()).double(), loss="mse")
    stack, params = gb.from_torch(model[:-1], loss="bce")
    X = np.random.default_rng(0).normal(size=(9, 2))
    y = np.random.default_rng(1).integers(0, 2, size=(9, 1)).astype(float)
    res = gb.backprop(stack, params, X, y, backend="numpy")
    ref = nn.BCELoss()(model(torch.tensor(X)), torch.tensor(y)).item()
    assert abs(res.loss - ref) <= 1e-12 * ref
