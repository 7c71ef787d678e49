"""Training recurrent nets on sequence tasks, and the classic demonstrations through time.

:func:`train_recurrent` trains a :class:`~gradbench.Recurrent` with a head (``loss``, on the last
step) on a task's sequences with the optimisers of :mod:`gradbench.optim`, gradients from
:func:`gradbench.backprop` (exact, converted to floats for the update), the net's own clipping.
Recorded per epoch: the mean mini-batch loss, the loss and accuracy on held-out sequences, and
(at the start and the end) the exact per-step gradient norms ||dL/dh_t|| on them: the curve that
shows how far back the gradient reaches.

Tasks (generated, seeded, no downloads):

``first_symbol(steps, n, seed)``
    Recall the first symbol: channel 0 carries a random symbol +-1 at every step, channel 1
    marks step 0; the label is the symbol of step 0, to be read out after the last step. Every
    later symbol arrives on the same channel, so the net must keep the first one through
    ``steps - 1`` overwrites (Hochreiter & Schmidhuber 1997 style; chance is ln 2 = 0.693).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import numpy as np

from gradbench.inputs import check_array
from gradbench.params import after, seed_rng
from gradbench.plan import check_history
from gradbench.recurrent.diagnose import state_norm_log10
from gradbench.recurrent.engine import backprop
from gradbench.recurrent.params import RecurrentParams, init_params
from gradbench.recurrent.spec import Recurrent
from gradbench.report import count
from gradbench.spec import check_choice
from gradbench.train import OPTIMIZERS, accuracy_text, chance_loss, class_labels, make_optimizer, resolve_momentum
from gradbench.train import check_labels, final_accuracy_text, optimizer_settings, optimizer_words, rising_words
from gradbench.train import accuracy as accuracy_of

TASKS = ("first_symbol",)


def first_symbol(steps: int, n: int, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(X (steps, n, 2), y (n,)): the recall-the-first-symbol task (module docstring)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = seed_rng(seed)
    X = np.zeros((steps, n, 2))
    X[:, :, 0] = 2.0 * rng.integers(0, 2, (steps, n)) - 1.0
    X[0, :, 1] = 1.0
    y = (X[0, :, 0] > 0).astype(np.int64)
    return X, y


def make_task(name: str, steps: int, n: int, seed=0):
    check_choice("task", name, TASKS)
    return first_symbol(steps, n, seed)


@dataclass(frozen=True, eq=False)
class RecurrentTrainResult:
    """The history of one training run through time (E epochs, T steps)."""

    rnn: Recurrent
    params: RecurrentParams
    settings: dict
    loss: np.ndarray          # (E,) mean mini-batch loss per epoch
    eval_loss: np.ndarray     # (E + 1,) held-out loss before training and after each epoch
    accuracy: np.ndarray      # (E + 1,)
    signal_start: np.ndarray  # (T,) log10 ||dL/dh_t|| (LSTM: of the pair with dL/dc_t) held out, before training
    signal_end: np.ndarray    # (T,) ... after training (or when it stopped)
    diverged_epoch: int | None = None
    divergence: str = ""
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return int(np.sum(~np.isnan(self.loss)))

    @property
    def final_loss(self) -> float:
        if self.diverged_epoch is not None:
            return float(self.loss[self.diverged_epoch])
        return float(self.eval_loss[self.epochs_run])

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[self.epochs_run]) if self.diverged_epoch is None else math.nan

    def summary(self) -> str:
        s, r = self.settings, self.rnn
        lines = [f"{s.get('name') or 'training'}: {r.cell}, {count(r.steps, 'step')}, hidden {r.hidden}"
                 + (f", {r.act}" if r.cell == "rnn" else "") + f", W_hh {r.recurrent_init}"
                 + (f" gain {r.sigma_w:g}" if r.sigma_w is not None else "")
                 + (f", forget bias {r.lstm_forget_bias:g}" if r.cell == "lstm" else "")
                 + (f", update-gate bias {r.gru_update_bias:g}" if r.gru_update_bias else "")
                 + (f", clip {r.clip} {r.clip_threshold:g} on {r.clip_on}" if r.clip else ""),
                 f"  task {s['task']} ({s['n_samples']} sequences), {s['optimizer']} lr={s['lr']:g}{optimizer_words(s)}, batch "
                 f"{s['batch_size']}, {count(s['epochs'], 'epoch')}, seed {s['seed']}"]
        if self.diverged_epoch is not None:
            lines.append(f"  DIVERGED in epoch {self.diverged_epoch + 1}: {self.divergence}")
        ran = self.epochs_run
        ref = chance_loss(r.loss, r.output_dim)
        lines.append(f"  held-out loss {self.eval_loss[0]:.4f} -> {self.final_loss:.4g}"
                     + ("" if ref is None else f" (chance {ref[0]} = {ref[1]:.4f}{ref[2]})")
                     + f", accuracy {accuracy_text(self.accuracy[0])} -> "
                     + final_accuracy_text(self.accuracy, self.diverged_epoch))
        rise = rising_words(self.eval_loss[:ran + 1] if self.diverged_epoch is None else [], s["lr"], held_out=True)
        if rise:
            lines.append("  " + rise)
        s0 = self.signal_start
        if len(s0) and np.isfinite(s0[-1]):
            lines.append(f"  at the start the gradient reaching step 0 was 10^{s0[0] - s0[-1]:.1f} of the one at the "
                         f"last step" + (f"; after {count(ran, 'epoch')} 10^{self.signal_end[0] - self.signal_end[-1]:.1f}"
                                         if np.isfinite(self.signal_end[-1]) and np.isfinite(self.signal_end[0]) else ""))
        return "\n".join(lines)


def _optimizer(name, lr, momentum):
    """:func:`gradbench.train.make_optimizer`, with the name checked before ``lr`` and a momentum
    beside sgd/adam refused (:func:`gradbench.train.resolve_momentum`)."""
    check_choice("optimizer", name, OPTIMIZERS)
    momentum = resolve_momentum(name, momentum)
    return make_optimizer(name, lr, momentum)  # checks lr (a real number > 0: NumPy scalars too)


def _targets(rnn: Recurrent, y: np.ndarray) -> np.ndarray:
    if rnn.loss == "softmax_ce":
        return np.ascontiguousarray(y, dtype=np.int64)
    return np.ascontiguousarray(y.reshape(-1, 1), dtype=rnn.np_dtype)


HISTORY_BYTES = 32  # bytes of history an epoch: its loss, held-out loss, accuracy (and slack)


def train_recurrent(rnn: Recurrent, X: np.ndarray, y: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray, *,
                    epochs: int = 10, batch_size: int = 32, optimizer: str = "adam", lr: float = 0.005,
                    momentum: float | None = None, seed: int = 0, params: RecurrentParams | None = None,
                    gate_bias: float = 0.0, backend: str = "auto", name: str = "", task: str = "custom",
                    progress: bool = False) -> RecurrentTrainResult:
    """Train ``rnn`` (a head on the last step) on sequences ``X`` (T, n, D) with labels ``y`` (n,).

    ``gate_bias`` (GRU): an older spelling of ``Recurrent(update_bias=...)``, added to the update
    gate's bias at init (to ``params``' too, when given), so that z ~ sigma(gate_bias) keeps the
    state; the result's ``rnn`` holds it as its ``update_bias``. Training stops at the
    first non-finite loss (of a mini-batch, or on the held-out set after an epoch: then that is
    the epoch's loss and nothing else of the epoch is recorded), gradient or parameter and says
    where. Accuracy as :func:`gradbench.train.class_labels` and :func:`gradbench.train.accuracy`
    say (NaN where a logit is not finite).
    """
    if not rnn.has_head or rnn.loss_on != "last":
        raise ValueError("training needs a head on the last step: Recurrent(loss='bce', ...)")
    if gate_bias and rnn.cell != "gru":
        raise ValueError("gate_bias is the GRU's update-gate bias; use forget_bias for an LSTM")
    if gate_bias and rnn.update_bias is not None:
        raise ValueError(f"gate_bias={gate_bias:g} and the net's update_bias={rnn.update_bias:g} are one bias: give "
                         "Recurrent(update_bias=...) only")
    for nm, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{nm} must be an int >= 1, got {v!r}")
    check_history(epochs, HISTORY_BYTES, "the training history")
    epochs, batch_size = int(epochs), int(batch_size)
    dt = rnn.np_dtype
    X = check_array("X", X, None, dt, owner="net", kind="Recurrent")  # nothing cast behind the caller's back
    X_eval = check_array("X_eval", X_eval, None, dt, owner="net", kind="Recurrent")
    for what, xs, labels in (("y", X, y), ("y_eval", X_eval, y_eval)):  # one label per sequence, nothing cast
        if xs.ndim == 3:
            check_labels(rnn, labels, xs.shape[1], what)
    opt = _optimizer(optimizer, lr, momentum)
    given = params is not None
    if gate_bias:
        rnn = rnn.replace(update_bias=float(gate_bias))  # init_params adds it to drawn weights
    params = init_params(rnn, seed) if params is None else params.copy()
    if gate_bias and given:
        params.b_ih[rnn.hidden:2 * rnn.hidden] += gate_bias
    pdict = dict(params.items())
    T_eval, labels = _targets(rnn, y_eval), class_labels(rnn.loss, rnn.output_dim, y_eval)
    rng = np.random.default_rng([seed, 1])
    n = X.shape[1]
    loss = np.full(epochs, np.nan)
    eval_loss = np.full(epochs + 1, np.nan)
    accuracy = np.full(epochs + 1, np.nan)
    diverged, why = None, ""
    signals = {}

    def evaluate(e: int, keep: str | None = None):
        """Entry e (0: before training) of the held-out evaluation, recorded, and backprop's
        result; after an epoch a non-finite loss is left unrecorded (the run diverged)."""
        res = backprop(rnn, params, X_eval, T_eval, backend=backend)
        if e and not math.isfinite(res.loss):
            return res
        eval_loss[e] = res.loss
        accuracy[e] = accuracy_of(rnn, params, res.output.to_float(np.float64, warn=False), labels)
        if keep:  # the backward state's norm, as run and compare read it (the LSTM: the pair with dL/dc_t)
            signals[keep] = state_norm_log10(res)
        return res

    from gradbench.cli.progress import epochs as progress_of_epochs  # here: the CLI package loads on use

    bar = progress_of_epochs(progress, epochs, name)
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        evaluate(0, "start")
        for epoch in range(epochs):
            order = rng.permutation(n)
            total, count = 0.0, 0
            batches = -(-n // batch_size)
            for j, start in enumerate(range(0, n, batch_size)):
                idx = order[start:start + batch_size]
                res = backprop(rnn, params, np.ascontiguousarray(X[:, idx]), _targets(rnn, y[idx]), backend=backend)
                total += res.loss * len(idx)
                count += len(idx)
                where = f" in mini-batch {j + 1} of {batches}"
                if not math.isfinite(res.loss):
                    diverged, why = epoch, f"loss became {res.loss}{where}{_where(res)}"
                    break
                grads = {k: g.to_float(dt, warn=False) for k, g in res.grads.items()}
                bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
                if bad:
                    diverged, why = epoch, f"gradient of {', '.join(bad)} overflowed {rnn.dtype}{where}"
                    break
                opt.step(pdict, grads)
                bad = [k for k, v in pdict.items() if not np.all(np.isfinite(v))]
                if bad:
                    diverged, why = epoch, f"parameters {', '.join(bad)} became non-finite after the update{where}"
                    break
            loss[epoch] = total / max(count, 1)
            if diverged is None:
                res = evaluate(epoch + 1, "end" if epoch == epochs - 1 else None)
                if not math.isfinite(res.loss):  # the loss that stopped training, as a mini-batch's does
                    diverged, why = epoch, f"held-out loss after the epoch became {res.loss}{_where(res)}"
                    loss[epoch] = res.loss
            if diverged is not None:
                break
            if bar is not None:
                bar.count(epoch + 1, note=f"loss {loss[epoch]:.4f}")
    if bar is not None:
        bar.__exit__(None, None, None)
    if "end" not in signals:
        signals["end"] = np.full(rnn.steps, np.nan)
    settings = dict(name=name, task=task, n_samples=n, epochs=epochs, batch_size=batch_size,
                    optimizer=optimizer, lr=float(lr), **optimizer_settings(opt), seed=seed,
                    gate_bias=float(gate_bias), backend=backend)
    ran = epochs if diverged is None else diverged + 1  # the diverging epoch's steps were taken
    params = after(params, rnn, f"{ran} epoch{'s' if ran != 1 else ''} of training")
    return RecurrentTrainResult(rnn=rnn, params=params, settings=settings, loss=loss, eval_loss=eval_loss,
                                accuracy=accuracy, signal_start=signals["start"], signal_end=signals["end"],
                                diverged_epoch=diverged, divergence=why, seconds=time.perf_counter() - t0)


def _where(res) -> str:
    """Where the forward state first turned non-finite, for a divergence's reason ("" if it did not)."""
    return ("" if res.first_nonfinite_forward is None
            else f" (the forward state first turned non-finite at step {res.first_nonfinite_forward})")


# ------------------------------------------------------------------ the demonstrations
@dataclass(frozen=True)
class RecurrentDemo:
    """A named, seeded training run through time: the net, the task and the training settings."""

    name: str
    title: str
    rnn: dict
    train: dict
    task: str = "first_symbol"
    n_samples: int = 512
    n_eval: int = 256

    def make_rnn(self, **overrides) -> Recurrent:
        kw = dict(input_dim=2, loss="bce", output_dim=1)
        kw.update(self.rnn)
        kw.update(overrides)
        return Recurrent(**kw)

    def data(self, steps: int, seed: int = 0):
        X, y = make_task(self.task, steps, self.n_samples, seed=np.random.default_rng([seed, 11]))
        Xe, ye = make_task(self.task, steps, self.n_eval, seed=np.random.default_rng([seed, 12]))
        return X, y, Xe, ye


RECURRENT_DEMOS: dict[str, RecurrentDemo] = {}


def _register(demo: RecurrentDemo) -> None:
    RECURRENT_DEMOS[demo.name] = demo


_MEMORY = dict(steps=100, hidden=16, clip="norm", clip_threshold=1.0, clip_on="global")
_ADAM = dict(optimizer="adam", lr=0.002, batch_size=32, epochs=32, seed=0)
_register(RecurrentDemo("memory-rnn", "recall the first of 100 symbols: vanilla tanh RNN (Gaussian W_hh)",
                        {**_MEMORY, "cell": "rnn", "recurrent_init": "normal"}, _ADAM))
_register(RecurrentDemo("memory-lstm", "the same task with an LSTM (orthogonal W_hh, forget-gate bias 5)",
                        {**_MEMORY, "cell": "lstm", "forget_bias": 5.0}, _ADAM))
_register(RecurrentDemo("memory-gru", "the same task with a GRU (orthogonal W_hh, update-gate bias 5)",
                        {**_MEMORY, "cell": "gru", "update_bias": 5.0}, _ADAM))
_EXPLODE = dict(cell="rnn", activation="identity", recurrent_init="identity", sigma_w=1.5, steps=20, hidden=16)
_SGD = dict(optimizer="sgd", lr=0.1, batch_size=32, epochs=30, seed=0)
_register(RecurrentDemo("exploding-rnn", "linear RNN with recurrent gain 1.5 (20 steps): the loss turns non-finite",
                        _EXPLODE, _SGD))
_register(RecurrentDemo("exploding-rnn-clipped", "the same with gradient clipping by global norm 1",
                        {**_EXPLODE, "clip": "norm", "clip_threshold": 1.0, "clip_on": "global"}, _SGD))


def check_demo_names(names: list[str]) -> None:
    """Refuse (ValueError) demo names that are neither recurrent nor feed-forward demos, listing
    both kinds, and a list that mixes the two kinds (``gradbench train`` runs one kind per call)."""
    from gradbench.train import DEMOS

    if "all" in names:
        raise ValueError("--demo all runs every feed-forward demo and takes no other names; the recurrent demos are "
                         f"{', '.join(RECURRENT_DEMOS)}")
    unknown = [n for n in names if n not in RECURRENT_DEMOS and n not in DEMOS]
    if unknown or not names:
        raise ValueError(f"--demo: unknown demo {', '.join(unknown) or repr(','.join(names))}; feed-forward demos: "
                         f"{', '.join(DEMOS)} or all; recurrent demos: {', '.join(RECURRENT_DEMOS)}")
    rec = [n for n in names if n in RECURRENT_DEMOS]
    if rec and len(rec) < len(names):
        ff = [n for n in names if n not in RECURRENT_DEMOS]
        raise ValueError(f"--demo mixes recurrent ({', '.join(rec)}) and feed-forward ({', '.join(ff)}) demos: "
                         "they cannot run in one call (different options and files); run two commands")


def run_recurrent_demo(name: str, *, backend: str = "auto", progress: bool = False, seed: int | None = None,
                       **overrides) -> RecurrentTrainResult:
    """Run one of :data:`RECURRENT_DEMOS`; ``overrides`` change training settings (``epochs``,
    ``lr``, ...; :func:`train_recurrent`'s keywords) or the net (any :class:`Recurrent` field:
    ``steps``, ``hidden``, ``recurrent_init``, ``forget_bias``, ...)."""
    check_choice("demo", name, tuple(RECURRENT_DEMOS))
    demo = RECURRENT_DEMOS[name]
    net_keys = {f.name for f in fields(Recurrent)}
    rnn = demo.make_rnn(**{k: v for k, v in overrides.items() if k in net_keys})
    kw = dict(demo.train)
    kw.update({k: v for k, v in overrides.items() if k not in net_keys})
    if seed is not None:
        kw["seed"] = seed
    X, y, Xe, ye = demo.data(rnn.steps, kw["seed"])
    return train_recurrent(rnn, X, y, Xe, ye, backend=backend, progress=progress, name=name, task=demo.task, **kw)
