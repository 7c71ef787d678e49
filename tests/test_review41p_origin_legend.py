"""A figure of imported weights names where they came from, never an init scheme that did not draw
them: ``run --torch model.pt --plot`` drew "depth 10, width 16, sigmoid, xavier_normal, ..." for
the README's model with torch's default init (review 41, item 3). The drawn curve is checked
against torch autograd on the same model and inputs."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import plot
from gradbench.cli import main

torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]'")


def _readme_model():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(2, 16), *[m for _ in range(10) for m in (nn.Linear(16, 16), nn.Sigmoid())],
                         nn.Linear(16, 1)).double()


def _torch_grad_log10(model, X, y):
    """log10 ||dL/dW_l|| of the 10 hidden Linear layers by torch autograd (BCE with logits)."""
    model.zero_grad()
    out = model(torch.from_numpy(X))
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.from_numpy(y)).backward()
    hidden = [m for m in model if isinstance(m, torch.nn.Linear)][1:-1]
    return np.log10([float(m.weight.grad.norm()) for m in hidden])


def test_the_legend_names_the_models_weights_and_the_line_is_torchs_gradient():
    model = _readme_model()
    stack, params = gb.from_torch(model, loss="bce")
    params = __import__("dataclasses").replace(params, origin="the weights of model.pt")
    X, y = gb.datasets.moons(200, noise=0.1, seed=0)
    y = y.reshape(-1, 1).astype(float)
    d = gb.diagnose(gb.backprop(stack, params, X, y), params)
    from gradbench.cli.common import stack_label

    for item in (d, gb.backprop(stack, params, X, y)):
        fig = plot.gradient_flow({stack_label(stack): item})
        ax = fig.axes[0]
        label = ax.get_legend().get_texts()[0].get_text()
        assert "the weights of model.pt" in label and stack.init not in label, label
        line = next(ln for ln in ax.lines if not ln.get_label().startswith("_"))
        np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=np.float64), _torch_grad_log10(model, X, y),
                                   rtol=1e-10, atol=1e-10)
    # drawn by the init: the scheme is named, as before
    drawn = gb.init_params(stack, 0)
    d0 = gb.diagnose(gb.backprop(stack, drawn, X, y), drawn)
    label = plot.gradient_flow({stack_label(stack): d0}).axes[0].get_legend().get_texts()[0].get_text()
    assert stack.init in label and "weights of" not in label
    # the label helper takes the origin itself
    assert stack_label(stack, d.weights).split(", ")[3] == "the weights of model.pt"


def test_run_torch_plot_legend_names_the_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "model.pt"
    torch.save(_readme_model(), path)
    figs = []
    real = plot.save
    monkeypatch.setattr(plot, "save", lambda fig, p, dpi=plot.DPI: (figs.append(fig), real(fig, p, dpi))[1])
    assert main(["run", "--torch", str(path), "--loss", "bce", "--plot", str(tmp_path / "f.png")]) == 0
    capsys.readouterr()
    (fig,) = figs
    label = fig.axes[0].get_legend().get_texts()[0].get_text()
    assert f"the weights of {path}" in label and "xavier_normal" not in label, label
