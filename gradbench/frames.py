"""Results where people analyse them: pandas DataFrames and a NumPy ``.npz`` file.

pandas is optional (``pip install 'gradbench[pandas]'``) and imported only by the ``*_frame``
functions; ``write_npz`` / ``read_npz`` need NumPy only.

Frames (L layers, E epochs; exact log10 norms are float64 columns computed from mantissa and
int64 exponent, so -30000.5 is a value like any other, and -inf means an exact zero):

- :func:`result_frame` (``Result.to_frame()``): one row per layer ``l``: ``grad_log10``
  (log10 ||dL/dW_l||), ``grad_mantissa`` and ``grad_exponent`` (the norm is exactly
  ``grad_mantissa * 2**grad_exponent``), ``signal_log10`` (log10 ||dL/dh_l||) and its
  mantissa/exponent, ``act_mean``, ``act_mean_log10``, ``act_std``, ``act_std_log10`` (of
  h_{l+1}; the float column is 0 where it underflows, the log10 column is exact),
  ``saturation``, ``dead``, and with signal clipping ``signal_clip_acted`` (bool: the clip
  changed dL/dh_l; ``Result.signal_clip_acted``). ``df.attrs``: loss, loss_log10, backend, stack,
  and with signal clipping ``signal_clip_acted_top`` (the clip changed the top signal dL/dh_L).
- :func:`diagnosis_frame` (``Diagnosis.to_frame()``): one row per layer with the diagnosis'
  per-layer arrays (the columns above that it holds, ``weight_log10`` when recorded, the
  histogram counts ``hist_00``, ``hist_01``, ... on the bin edges ``df.attrs["hist_edges"]``,
  and ``hist_zeros``, ``hist_nonfinite``, ``hist_outside``). ``df.attrs``: verdict,
  explanation, decades_per_layer, loss, stack, ...
- :func:`recurrent_result_frame` (``RecurrentResult.to_frame()``): one row per time step
  ``step`` t = 0 .. T - 1 of a recurrent net: ``signal_log10`` (log10 ||dL/dh_t||) and its
  mantissa/exponent, ``cell_signal_log10`` and its mantissa/exponent (the LSTM's ||dL/dc_t||;
  LSTM only), ``grad_log10`` (log10 of step t's contribution to dL/dW_hh) and its
  mantissa/exponent, with a loss at every step ``carried_signal_log10`` and ``carried_grad_log10``
  (the last step's loss alone, carried back) and their mantissas/exponents, ``act_mean``,
  ``act_mean_log10``, ``act_std``, ``act_std_log10`` (of h_t),
  ``saturation``, ``gate_mean``, ``gate_low`` (NaN for the vanilla cell), and with signal clipping
  ``signal_clip_acted`` (bool: the clip changed step t's backward state;
  ``RecurrentResult.signal_clip_acted[1:]``) and with a carried pass ``carried_signal_clip_acted``
  (the same for it). ``df.attrs``: loss, loss_log10, backend, rnn, first_nonfinite_forward,
  first_nonfinite_backward, and with signal clipping ``signal_clip_acted_initial`` (the clip
  changed dL/dh_{-1}, the initial state's gradient; ``carried_signal_clip_acted_initial`` too
  with a carried pass).
- ``RecurrentDiagnosis.to_frame()`` (:func:`diagnosis_frame`): one row per ``step`` with the
  diagnosis' per-step arrays (``cell_log10`` for the LSTM only). ``df.attrs``: verdict,
  explanation, decades_per_step, reach, rnn, ...
- :func:`train_frame` (``TrainResult.to_frame()``): one row per epoch and layer, ``epoch`` 0
  (before training) to E and ``layer`` 0 to L - 1: ``grad_log10`` (full data set, before
  epoch 1 / after epoch e), ``update_ratio_percent`` (100 ||Delta W_l|| / ||W_l|| during
  epoch e; NaN at epoch 0), ``loss`` (training loss during epoch e, its mini-batches' mean losses weighted by their sizes; NaN at 0),
  ``eval_loss``, ``accuracy`` (after epoch e), ``update_ratio_input_percent`` and
  ``update_ratio_head_percent`` (the input layer's and the head's, repeated per layer).

The ``.npz`` file of a diagnosis (:func:`write_npz`, ``gradbench run --out x.npz``; the
format is documented in ``docs/formats.md``) holds the per-layer columns as arrays of length
L, their names in ``columns``, ``hist_counts`` (L, bins), ``hist_edges`` (bins + 1) and the
other fields in the JSON string ``meta``; ``pd.DataFrame({c: z[c] for c in z["columns"]})`` is the frame of
:func:`diagnosis_frame` without the histogram columns, and ``Diagnosis.from_npz(path)`` the
diagnosis itself. A recurrent net's diagnosis (``gradbench run --cell ... --out x.npz``) is
stored the same way with ``step`` (length T) in place of ``layer``, no histograms, and the
string ``kind`` = ``"recurrent"`` (a stack's file has no ``kind``);
``RecurrentDiagnosis.from_npz(path)`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np

from gradbench import _atomic

NPZ_FORMAT = 1


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_frame() needs pandas: pip install pandas (or pip install 'gradbench[pandas]')") from exc
    return pd


def _float_and_log(v):
    """(float value, exact log10 |value|) of a LogScaled."""
    with np.errstate(divide="ignore"):
        return np.asarray(v.to_float(warn=False), dtype=np.float64), np.asarray(v.log10(), dtype=np.float64)


def _exact_columns(name: str, v, n: int) -> dict:
    """``NAME_log10``, ``NAME_mantissa`` and ``NAME_exponent`` of a LogScaled with one value a row."""
    with np.errstate(divide="ignore"):
        log10 = np.asarray(v.log10(), dtype=np.float64)
    return {f"{name}_log10": log10, f"{name}_mantissa": np.asarray(v.mantissa, dtype=np.float64),
            f"{name}_exponent": np.broadcast_to(np.asarray(v.exponent, dtype=np.int64), (n,)).copy()}


def result_frame(res):
    """One row per layer of a :class:`~gradbench.Result` (module docstring)."""
    pd = _pandas()
    L = len(res.grad_norm)
    act_mean, act_mean_log10 = _float_and_log(res.act_mean)
    act_std, act_std_log10 = _float_and_log(res.act_std)
    cols = {"layer": np.arange(L), **_exact_columns("grad", res.grad_norm, L),
            **_exact_columns("signal", res.signal_norm, L),
            "act_mean": act_mean, "act_mean_log10": act_mean_log10,
            "act_std": act_std, "act_std_log10": act_std_log10,
            "saturation": np.asarray(res.saturation, dtype=np.float64),
            "dead": np.asarray(res.dead, dtype=np.float64)}
    acted = getattr(res, "signal_clip_acted", None)
    if acted is not None:  # signal clipping: whether it changed dL/dh_l (the top's in attrs)
        cols["signal_clip_acted"] = np.asarray(acted[:L], dtype=bool)
    df = pd.DataFrame(cols)
    df.attrs.update(loss=float(res.loss), loss_log10=float(res.loss_exact.log10()), backend=res.backend,
                    stack=dataclasses.asdict(res.stack))
    if acted is not None:
        df.attrs["signal_clip_acted_top"] = bool(acted[L])
    return df


def recurrent_result_frame(res):
    """One row per time step of a :class:`~gradbench.recurrent.RecurrentResult` (module docstring)."""
    pd = _pandas()
    T = len(res.signal_norm.mantissa)
    cols = {"step": np.arange(T), **_exact_columns("signal", res.signal_norm, T)}
    if res.cell_signal_norm is not None:
        cols.update(_exact_columns("cell_signal", res.cell_signal_norm, T))
    cols.update(_exact_columns("grad", res.grad_norm, T))
    if res.carried_signal_norm is not None:
        cols.update(_exact_columns("carried_signal", res.carried_signal_norm, T))
        cols.update(_exact_columns("carried_grad", res.carried_grad_norm, T))
    cols["act_mean"], cols["act_mean_log10"] = _float_and_log(res.act_mean)
    cols["act_std"], cols["act_std_log10"] = _float_and_log(res.act_std)
    for k in ("saturation", "gate_mean", "gate_low"):
        cols[k] = np.asarray(getattr(res, k), dtype=np.float64)
    acted = {k: getattr(res, k, None) for k in ("signal_clip_acted", "carried_signal_clip_acted")}
    for k, a in acted.items():
        if a is not None:  # signal clipping: whether it changed step t's state (H[t + 1]); dL/dh_{-1}'s in attrs
            cols[k] = np.asarray(a[1:], dtype=bool)
    df = pd.DataFrame(cols)
    df.attrs.update(loss=float(res.loss), loss_log10=float(res.loss_exact.log10()), backend=res.backend,
                    rnn=dataclasses.asdict(res.rnn), first_nonfinite_forward=res.first_nonfinite_forward,
                    first_nonfinite_backward=res.first_nonfinite_backward)
    df.attrs.update({f"{k}_initial": bool(a[0]) for k, a in acted.items() if a is not None})
    return df


def _split_fields(d) -> tuple[dict[str, np.ndarray], dict]:
    """A diagnosis' fields: (arrays, everything else), whatever fields the Diagnosis has."""
    arrays, meta = {}, {}
    for f in dataclasses.fields(d):
        v = getattr(d, f.name)
        (arrays if isinstance(v, np.ndarray) else meta)[f.name] = v
    return arrays, meta


def _index(d) -> tuple[str, int]:
    """The rows of a diagnosis: ``layer`` (a stack's :class:`~gradbench.Diagnosis`) or ``step``
    (a recurrent net's :class:`~gradbench.recurrent.diagnose.RecurrentDiagnosis`), and how many."""
    return ("layer", d.depth) if hasattr(d, "depth") else ("step", d.steps)


def _diag_columns(d) -> dict[str, np.ndarray]:
    """``layer`` (``step``) and every per-layer (L,) (per-step (T,)) array of the diagnosis, in
    field order (the histogram's L + 1 edges are no column even when there are L + 1 of them: 40
    bins at depth 41; the LSTM's ``cell_log10`` is empty for the other cells)."""
    arrays, _ = _split_fields(d)
    name, n = _index(d)
    cols = {name: np.arange(n)}
    cols.update({k: a for k, a in arrays.items() if a.shape == (n,) and k not in _NOT_PER_LAYER})
    return cols


_NOT_PER_LAYER = ("hist_edges",)  # shaped (bins + 1,), not (L,)


def diagnosis_frame(d):
    """One row per layer of a :class:`~gradbench.Diagnosis`, or per time step of a
    :class:`~gradbench.recurrent.diagnose.RecurrentDiagnosis` (module docstring)."""
    pd = _pandas()
    cols = _diag_columns(d)
    if not hasattr(d, "hist_counts"):  # a recurrent diagnosis: no histograms
        df = pd.DataFrame(cols)
        df.attrs.update(_split_fields(d)[1])
        return df
    counts = np.asarray(d.hist_counts)
    width = max(2, len(str(max(counts.shape[1] - 1, 0))))
    for j in range(counts.shape[1] if counts.ndim == 2 else 0):
        cols[f"hist_{j:0{width}d}"] = counts[:, j]
    df = pd.DataFrame(cols)
    df.attrs.update(_split_fields(d)[1])
    df.attrs.update(hist_edges=np.asarray(d.hist_edges).tolist())
    return df


def train_frame(r):
    """One row per epoch (0 = before training) and layer of a :class:`~gradbench.TrainResult`."""
    pd = _pandas()
    E1, L = r.grad_log10.shape
    epoch = np.repeat(np.arange(E1), L)

    def per_epoch(a):  # (E,) over epochs 1..E -> (E+1,) with NaN at epoch 0, repeated per layer
        return np.repeat(np.concatenate([[np.nan], np.asarray(a, dtype=np.float64)]), L)

    ratio = np.vstack([np.full((1, L), np.nan), np.asarray(r.update_ratio, dtype=np.float64)])
    df = pd.DataFrame({
        "epoch": epoch,
        "layer": np.tile(np.arange(L), E1),
        "grad_log10": np.asarray(r.grad_log10, dtype=np.float64).reshape(-1),
        "update_ratio_percent": ratio.reshape(-1),
        "loss": per_epoch(r.loss),
        "eval_loss": np.repeat(np.asarray(r.eval_loss, dtype=np.float64), L),
        "accuracy": np.repeat(np.asarray(r.accuracy, dtype=np.float64), L),
        "update_ratio_input_percent": per_epoch(r.update_ratio_input),
        "update_ratio_head_percent": per_epoch(r.update_ratio_head),
    })
    df.attrs.update(settings=dict(r.settings), stack=dataclasses.asdict(r.stack), diverged_epoch=r.diverged_epoch,
                    divergence=r.divergence)
    return df


# ------------------------------------------------------------------ .npz
def _encode(v):
    """JSON-ready: non-finite floats as {"__float__": "nan" | "inf" | "-inf"}, NumPy scalars as Python."""
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if np.isfinite(v) else {"__float__": repr(v)}
    return v


def _decode(v):
    if isinstance(v, dict):
        if set(v) == {"__float__"}:
            return float(v["__float__"])
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


RECURRENT = "recurrent"  # the ``kind`` of a recurrent net's diagnosis file (a stack's has none)


def _kind(d) -> str:
    return "stack" if hasattr(d, "depth") else RECURRENT


def _npz_arrays(d, head: dict | None = None) -> dict:
    """The arrays of one diagnosis's ``.npz`` (see :func:`write_npz`)."""
    fields, meta = _split_fields(d)
    cols = _diag_columns(d)
    arrays = {k: (v.astype(np.min_scalar_type(int(v.max()))) if v.dtype.kind in "iu" and v.size and v.min() >= 0
                  else v) for k, v in fields.items()}  # counts in the smallest unsigned type
    index = _index(d)[0]
    arrays[index] = cols[index]
    arrays["columns"] = np.array(list(cols))
    for k, v in meta.items():
        if isinstance(v, (str, int, float, np.integer, np.floating)) and not isinstance(v, bool):
            arrays[k] = np.array(v)
    arrays["meta"] = np.array(json.dumps(_encode(meta), allow_nan=False))
    if head is not None:
        arrays["head"] = np.array(json.dumps(_encode(head), allow_nan=False))
    arrays["format"] = np.array(NPZ_FORMAT)
    if _kind(d) == RECURRENT:
        arrays["kind"] = np.array(RECURRENT)
    return arrays


def save_npz(f, diagnoses, head: dict | None = None) -> None:
    """Write one diagnosis, or a dict ``{name: diagnosis}`` of several (each field under
    ``name/field``), and the JSON ``head`` of the file, to the binary file ``f``."""
    if isinstance(diagnoses, dict):
        arrays = {"names": np.array(list(diagnoses)), "format": np.array(NPZ_FORMAT)}
        kinds = {_kind(d) for d in diagnoses.values()}
        if len(kinds) > 1:
            raise ValueError("one .npz file holds the diagnoses of stacks or of recurrent nets, not both")
        if kinds == {RECURRENT}:
            arrays["kind"] = np.array(RECURRENT)
        for name, d in diagnoses.items():
            arrays.update({f"{name}/{k}": v for k, v in _npz_arrays(d).items() if k not in ("format", "kind")})
        if head is not None:
            arrays["head"] = np.array(json.dumps(_encode(head), allow_nan=False))
    else:
        arrays = _npz_arrays(diagnoses, head)
    np.savez_compressed(f, **arrays)


def write_npz(d, path, head: dict | None = None) -> str:
    """Write a :class:`~gradbench.Diagnosis` (or a recurrent net's
    :class:`~gradbench.recurrent.diagnose.RecurrentDiagnosis`) to ``path`` (``.npz``,
    atomically; ``docs/formats.md``).

    Every array field is stored (float64; counts in the smallest unsigned type that holds them),
    compressed, and loads with ``np.load`` at once; the other fields
    are in the JSON string ``meta`` (and, when they are a number or a string, also as 0-d
    arrays of their name), what wrote the file in the JSON string ``head``. Returns the path.
    """
    path = os.fspath(path)
    if not path.lower().endswith(".npz"):
        raise ValueError(f"path {path!r} must end in .npz")
    return _atomic.write_atomic(path, lambda f: save_npz(f, d, head), binary=True, suffix=".npz")


def json_fields(s, reader: str) -> dict:
    """The diagnosis dict of a JSON text (``to_json``'s, or the whole text of a ``--out x.json``
    file of one diagnosis, whose ``"diagnosis"`` it takes). A path is refused, naming how to read
    the file (``Diagnosis.from_json('r.json')`` failed with a bare JSONDecodeError); ``reader``:
    the class's name for the message."""
    text = s.decode() if isinstance(s, (bytes, bytearray)) else s
    if isinstance(text, os.PathLike) or (isinstance(text, str) and not text.lstrip().startswith("{")
                                         and os.path.isfile(text)):
        raise ValueError(f"{reader}.from_json takes the JSON text, not a path ({os.fspath(text)!r}): read the file "
                         f"with {reader}.from_json(open(path).read()), or an .npz with {reader}.from_npz(path)")
    if not isinstance(text, str):
        raise TypeError(f"{reader}.from_json takes the JSON text (a str), got {type(s).__name__}")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{reader}.from_json: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(d, dict) and "diagnosis" in d and isinstance(d["diagnosis"], dict):
        d = d["diagnosis"]  # the text of a --out file of one diagnosis
    if not isinstance(d, dict):
        raise ValueError(f"{reader}.from_json: the JSON is a {type(d).__name__}, not a diagnosis")
    return d


def npz_fields(path, name: str | None = None, kind: str = "stack") -> dict:
    """The fields of the :class:`~gradbench.Diagnosis` written by :func:`write_npz` (``name``:
    one of a file of several, ``gradbench compare --out x.npz``; ``kind="recurrent"``: of a
    recurrent net's diagnosis).

    ``Diagnosis.from_npz(path)`` (``RecurrentDiagnosis.from_npz(path)``) builds the diagnosis
    from them; no pickles are loaded. A file of the other kind is refused, naming its reader.
    """
    with open(os.fspath(path), "rb") as f:  # a missing file: FileNotFoundError, as before
        is_zip = zipfile.is_zipfile(f)
    if not is_zip:  # (NumPy spoke of pickles for a .json, a .npy had no .files)
        json_reader = ("gradbench.recurrent.diagnose.RecurrentDiagnosis" if kind == RECURRENT
                       else "gradbench.Diagnosis")
        raise ValueError(f"{path} is not a gradbench diagnosis .npz (format {NPZ_FORMAT}): a .json file of "
                         f"--out reads with {json_reader}.from_dict(json.load(f)['diagnosis'])")
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if "format" not in z.files or int(z["format"]) != NPZ_FORMAT:
            raise ValueError(f"{path} is not a gradbench diagnosis .npz (format {NPZ_FORMAT})")
        found = str(z["kind"]) if "kind" in z.files else "stack"
        if found != kind:
            reader = ("gradbench.recurrent.diagnose.RecurrentDiagnosis.from_npz" if found == RECURRENT
                      else "gradbench.Diagnosis.from_npz")
            raise ValueError(f"{path} holds the diagnosis of {'a recurrent net' if found == RECURRENT else 'a stack'}: "
                             f"read it with {reader}")
        pre = "" if name is None else f"{name}/"
        if pre + "meta" not in z.files:
            names = [str(n) for n in z["names"]] if "names" in z.files else []
            if name is None:  # (a file of one unnamed diagnosis has its meta at the top)
                raise ValueError(f"{path} holds the diagnoses {', '.join(names)}: pass name= one of them")
            raise ValueError(f"{path} has no diagnosis {name!r}: " + (f"it holds {', '.join(names)}" if names else
                                                                      "it holds one, unnamed: read it without name="))
        meta = _decode(json.loads(str(z[pre + "meta"])))
        extra = {"layer", "step", "kind", "columns", "meta", "format", "head"} | set(meta)
        kw = {k[len(pre):]: (z[k].astype(np.int64) if z[k].dtype.kind in "iu" else z[k].copy())
              for k in z.files if k.startswith(pre) and k[len(pre):] not in extra and (pre or "/" not in k)
              and k != "names"}
    kw.update(meta)
    return kw
