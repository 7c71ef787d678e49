"""The public entry points that take either a :class:`~gradbench.Stack` or a
:class:`~gradbench.Recurrent`: ``gb.init_params``, ``gb.backprop`` and ``gb.diagnose``.

Each dispatches on the type of its first argument to the stacks' function (``gradbench.params``,
``gradbench.engine``, ``gradbench.diagnose``) or the recurrent one (``gradbench.recurrent``);
the signatures and docstrings are theirs. Dispatching here rather than inside those modules keeps
the import graph free of cycles (the recurrent modules build on the stacks' ones).
"""

from __future__ import annotations

import functools

from gradbench import diagnose as _diagnose
from gradbench import engine as _engine
from gradbench import params as _params
from gradbench.recurrent import engine as _rengine
from gradbench.recurrent import params as _rparams
from gradbench.recurrent.results import RecurrentResult
from gradbench.recurrent.spec import Recurrent
from gradbench.results import Result
from gradbench.spec import Stack


@functools.wraps(_params.init_params)
def init_params(spec, seed=0):
    if isinstance(spec, Recurrent):
        return _rparams.init_params(spec, seed)
    if not isinstance(spec, Stack):
        raise TypeError(f"init_params takes a gradbench.Stack or gradbench.Recurrent, got {type(spec).__name__}")
    return _params.init_params(spec, seed)


@functools.wraps(_engine.backprop)
def backprop(spec, params, x, targets=None, **options):
    if isinstance(spec, Recurrent):
        return _rengine.backprop(spec, params, x, targets, **options)
    return _engine.backprop(spec, params, x, targets, **options)


@functools.wraps(_diagnose.diagnose)
def diagnose(res, *args, **options):
    if isinstance(res, RecurrentResult):
        from gradbench.recurrent import diagnose as _rdiagnose

        return _rdiagnose.diagnose(res, *args, **options)
    if not isinstance(res, Result):
        raise TypeError("diagnose takes the result of gradbench.backprop (a gradbench.Result or "
                        f"RecurrentResult), got {type(res).__name__}")
    return _diagnose.diagnose(res, *args, **options)


init_params.__doc__ = (_params.init_params.__doc__ or "") + (
    "\n    With a :class:`gradbench.Recurrent`: :func:`gradbench.recurrent.init_params` "
    "(W_ih, W_hh, b_ih, b_hh in torch's layout).\n")
backprop.__doc__ = (_engine.backprop.__doc__ or "") + (
    "\n    With a :class:`gradbench.Recurrent`: :func:`gradbench.recurrent.engine.backprop` "
    "(x is the (steps, batch, input_dim) sequence; options h0, c0, checkpoint, stats_only, "
    "memory_budget, progress).\n")
diagnose.__doc__ = (_diagnose.diagnose.__doc__ or "") + (
    "\n    With a :class:`gradbench.recurrent.RecurrentResult`: "
    ":func:`gradbench.recurrent.diagnose.diagnose` (a verdict through time).\n")
