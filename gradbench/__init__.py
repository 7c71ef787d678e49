"""gradbench: the exact gradient chain through very deep stacks, and why it vanishes or explodes.

Quick start::

    import gradbench as gb
    stack = gb.Stack(depth=50, width=64, activation="sigmoid", init="xavier_normal")
    params = gb.init_params(stack, seed=0)
    x = gb.gaussian_input(stack, batch=32, seed=1)
    res = gb.backprop(stack, params, x, backend="numpy")
    res.grad_norm.log10()      # log10 ||dL/dW_l||_F per layer, exact at any depth
"""

from gradbench.backends import backend_status, backends
from gradbench.histograms import GradHistogram
from gradbench.logscaled import LogScaled, UnderflowWarning
from gradbench.params import GeneratedParams, Params, gaussian_input
from gradbench.results import Grads, Result
from gradbench.spec import ACTIVATIONS, INITS, LOSSES, Stack

__version__ = "0.2.0"

__all__ = [
    "ACTIVATIONS", "INITS", "LOSSES", "GeneratedParams", "GradHistogram", "Grads", "LogScaled",
    "Params", "Result", "Stack",
    "UnderflowWarning", "backend_status", "backends", "backprop", "gaussian_input", "init_params",
]

# Diagnosis, training and the classic demonstrations (plots: ``import gradbench.plot``;
# it is not imported here so that ``import gradbench`` does not load matplotlib).
from gradbench import datasets
from gradbench.diagnose import Diagnosis
from gradbench.train import DEMOS, TrainResult, run_demo, train

__all__ += ["DEMOS", "Diagnosis", "TrainResult", "datasets", "diagnose", "run_demo", "train"]

from gradbench.sweep import sweep  # noqa: E402  (Dask and pandas are imported only when it runs)

# PyTorch interchange (needs torch: pip install 'gradbench[torch]'), imported on first use so
# that ``import gradbench`` never imports torch; layer-wise pretraining; pandas and TensorBoard
# output (gradbench.frames, gradbench.tensorboard_io; pandas / tensorboardX imported when used).
from gradbench.pretrain import pretrain  # noqa: E402

__all__ += ["from_torch", "pretrain", "to_torch"]


def __getattr__(name: str):
    if name in ("from_torch", "to_torch"):
        import importlib

        return getattr(importlib.import_module("gradbench.torch_io"), name)
    raise AttributeError(f"module 'gradbench' has no attribute {name!r}")

# Recurrent cells through time (gradbench.recurrent); init_params, backprop and diagnose take a
# Stack or a Recurrent (gradbench.api dispatches).
from gradbench.api import backprop, diagnose, init_params
from gradbench.recurrent import GeneratedSequence, Recurrent, RecurrentParams, RecurrentResult, sequence_input

__all__ += ["GeneratedSequence", "Recurrent", "RecurrentParams", "RecurrentResult", "sequence_input"]
