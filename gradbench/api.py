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

        # a stack's diagnose takes params, bins, hist_range and tiny; said here, not as Python's
        # "takes 1 positional argument but 2 were given" (gb.diagnose(res, params) as for a stack)
        allowed = ("threshold", "reach_decades")
        if args:
            raise TypeError(f"gb.diagnose of a recurrent net's result takes the result alone ({len(args)} more "
                            "positional argument(s) given, e.g. params: a stack's diagnose reads its weights' "
                            "norms, a recurrent net's reads only the gradients through time, and the result "
                            "records where the weights came from); its options are keywords: "
                            + ", ".join(f"{k}=" for k in allowed))
        other = [k for k in options if k not in allowed]
        if other:
            raise TypeError(f"gb.diagnose of a recurrent net's result takes the keywords "
                            f"{', '.join(f'{k}=' for k in allowed)} only, got {', '.join(f'{k}=' for k in other)}"
                            " (bins, hist_range and tiny are a stack's diagnosis options)")
        return _rdiagnose.diagnose(res, **options)
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
