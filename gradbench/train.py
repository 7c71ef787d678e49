"""Training a stack on a small data set, and the classic demonstrations.

The model is the :class:`~gradbench.Stack` with an input layer (data dimension D -> width N,
``Stack.input_dim``) and a head (``Stack.loss`` mse / bce / softmax_ce, ``output_dim``).
Gradients come from :func:`gradbench.backprop` (exact, :class:`~gradbench.LogScaled`) and are
converted to floats for the update; an optimiser from :mod:`gradbench.optim` applies
``w <- w - lr * dL/dw`` or its refinements. Clipping is the stack's own (``clip``, ``clip_on``).

Recorded per epoch (E epochs, L layers):

- ``loss`` (E,): mean mini-batch loss during the epoch (what Keras prints);
- ``eval_loss``, ``accuracy`` (E + 1,): on the whole data set before training and after each
  epoch. Accuracy is the fraction of samples whose predicted class is their label: bce
  against ``y >= 0.5`` (a soft target counts for its nearer class), softmax_ce and one-hot mse
  against the labels, mse with one output only when every target is 0 or 1 (regression
  targets have no accuracy: NaN); NaN also when a logit is not finite;
- ``grad_log10`` (E + 1, L): log10 ||dL/dW_l|| on the whole data set, exact (under a clip of the
  backward signal, of the clipped chain with the whole data set as one batch: docs/formats.md);
- ``update_ratio`` (E, L): 100 * ||W_l(after) - W_l(before)|| / ||W_l(before)|| over the
  epoch, in percent: the net change of all the epoch's steps (norms scaled, so that no square
  overflows). For one plain SGD step this is ``||lr * dL/dW_l|| / ||W_l||``
  (docs/design.md section 6), the "weights changed by 0.0001 %" of the lecture notes.

Training stops at the first non-finite mini-batch loss, gradient or parameter, or non-finite
loss on the whole data set after an epoch (the parameters can still be finite, 1e134, while
the forward pass of the whole data overflows): ``diverged_epoch`` is that epoch, and nothing
of it is recorded in these arrays but its non-finite loss. What that epoch did is in
``extras["diverged_steps"]``: the mini-batch where it stopped, the steps it applied, and the
update ratios of those steps where the weights are still finite (the summary says them: the
NaN of that epoch read as 0 / 0, "weights of norm 0 that stay 0", of weights of norm 13.4 that
moved 1.7e126 % in three steps). ``extras["weights_origin"]``: where given starting weights came
from (:func:`gradbench.params.origin_words`; None when the init scheme drew them), which the
summary says in place of the scheme. ``extras["first_unchanged"]``: [entries of the first weight
matrix (W_in, or layer 0's W) that had a gradient at the start and never changed, entries that
had one]; the summary says it when that is at least half of them (updates below half a unit in
the last place of the weights, rounded away: float32 deep-sigmoid moved 2 of 32).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from gradbench import datasets
from gradbench._fields import short_repr
from gradbench.activations import RESCUE
from gradbench.diagnose import frobenius_log10
from gradbench.engine import backprop
from gradbench.inputs import all_finite, check_aligned, check_array, check_stored_params, refuse_masked
from gradbench.optim import OPTIMIZERS, SGD, Adam, resolve_momentum  # noqa: F401 (re-exported)
from gradbench.params import Params, after, check_seed, init_params, origin_words
from gradbench.plan import check_history
from gradbench.reference import norm_scaled
from gradbench.report import count, describe
from gradbench.spec import Stack, check_choice
from gradbench.verdict import _layers

# Where a run's starting weights came from (settings["weights"], the head of `train --out`)
INIT_WEIGHTS = "gradbench.init_params(stack, seed)"
GIVEN_WEIGHTS = "params given to gradbench.train"


def make_optimizer(name: str = "sgd", lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
    """An optimiser of :mod:`gradbench.optim` by name: ``sgd``, ``momentum`` or ``adam``."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return Adam(lr=lr, weight_decay=weight_decay)
    return SGD(lr=lr, momentum=momentum if name == "momentum" else 0.0, weight_decay=weight_decay)


def targets_for(stack: Stack, y: np.ndarray) -> np.ndarray:
    """Targets in the form the stack's head expects, from integer labels ``y`` (B,).

    bce: (B, 1) labels in {0, 1}; softmax_ce: the labels; mse: one-hot (B, O), or (B, 1)
    labels when ``output_dim == 1``.
    """
    y = np.asarray(y)
    if stack.loss == "softmax_ce":
        return np.ascontiguousarray(y, dtype=np.int64)
    if stack.loss == "bce":
        if stack.output_dim != 1:
            raise ValueError(f"loss='bce' with labels needs output_dim=1, got {stack.output_dim}")
        return np.ascontiguousarray(y.reshape(-1, 1), dtype=stack.np_dtype)
    if stack.output_dim == 1:
        return np.ascontiguousarray(y.reshape(-1, 1), dtype=stack.np_dtype)
    onehot = np.zeros((len(y), stack.output_dim), dtype=stack.np_dtype)
    onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return onehot


def class_labels(loss: str, output_dim: int, y) -> np.ndarray | None:
    """The classes that accuracy compares the predictions with, or None when the targets ``y``
    are not class labels: softmax_ce and one-hot mse (``output_dim > 1``) the labels; bce
    ``y >= 0.5`` (a soft target counts for its nearer class, 0.5 for class 1); mse with one
    output the targets when every one is 0 or 1, else None (regression targets)."""
    y = np.asarray(y)
    if loss == "softmax_ce" or (loss == "mse" and output_dim > 1):
        return y.astype(np.int64)
    if loss == "bce":
        return (y >= 0.5).astype(np.int64)
    return y.astype(np.int64) if np.all((y == 0) | (y == 1)) else None


def predict_labels(net, logits: np.ndarray) -> np.ndarray:
    """Classes from the head's logits of ``net`` (a Stack or a Recurrent): the largest logit
    (softmax_ce, one-hot mse), else logit > 0 (bce) or > 0.5 (mse with one output)."""
    if net.loss == "softmax_ce" or (net.loss == "mse" and net.output_dim > 1):
        return np.argmax(logits, axis=1)
    threshold = 0.0 if net.loss == "bce" else 0.5
    return (logits[:, 0] > threshold).astype(np.int64)


def accuracy(net, params, h_top: np.ndarray, labels: np.ndarray | None) -> float:
    """The fraction of samples whose predicted class (from the top activations h_top through
    the head) is their label; NaN without class labels (``labels`` None, :func:`class_labels`)
    or when a logit is not finite (NaN logits name no class)."""
    logits = h_top @ params.W_out.T.astype(np.float64) + params.b_out
    if labels is None or not np.all(np.isfinite(logits)):
        return math.nan
    return float(np.mean(predict_labels(net, logits) == labels))


def learnable(stack: Stack) -> tuple[str, ...]:
    """Names of the parameters that training updates (gamma/beta only with batch norm, slope only for PReLU)."""
    names = ["W", "b"]
    if stack.batch_norm:
        names += ["gamma", "beta"]
    if stack.activation == "prelu":
        names.append("slope")
    if stack.has_input_layer:
        names += ["W_in", "b_in"]
    names += ["W_out", "b_out"]
    return tuple(names)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The history of one training run (see the module docstring for the shapes)."""

    __repr__ = short_repr  # arrays as their shapes (gradbench._fields.short_repr)

    stack: Stack
    params: Params
    settings: dict
    loss: np.ndarray
    eval_loss: np.ndarray
    accuracy: np.ndarray
    grad_log10: np.ndarray
    update_ratio: np.ndarray
    update_ratio_input: np.ndarray
    update_ratio_head: np.ndarray
    diverged_epoch: int | None = None
    divergence: str = ""
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    def to_frame(self):
        """One row per epoch and layer as a pandas DataFrame (:func:`gradbench.frames.train_frame`)."""
        from gradbench.frames import train_frame

        return train_frame(self)

    @property
    def epochs_run(self) -> int:
        return int(np.sum(~np.isnan(self.loss)))

    @property
    def final_loss(self) -> float:
        """The last finite full-data loss (or the non-finite value at which training stopped)."""
        if self.diverged_epoch is not None:
            return float(self.loss[self.diverged_epoch])
        return float(self.eval_loss[-1])

    @property
    def first_layer_ratio(self) -> np.ndarray:
        """Per-epoch % change of the first weight matrix: the input layer if any, else W_0."""
        return self.update_ratio_input if self.stack.has_input_layer else self.update_ratio[:, 0]

    def summary(self) -> str:
        s = self.settings
        n, bs = s["n_samples"], s["batch_size"]
        batch = f"batch {bs}" if bs <= n else f"batch {n} (all {n} samples: the batch size {bs} is larger)"
        lines = [
            f"{s.get('name') or 'training'}: {_describe(self.stack, self.extras.get('weights_origin'))}",
            f"  data {s['dataset']} ({n} samples), {s['optimizer']} lr={s['lr']:g}{optimizer_words(s)}, "
            f"{batch}, {count(s['epochs'], 'epoch')}, seed {s['seed']}",
        ]
        if s.get("weights", INIT_WEIGHTS) != INIT_WEIGHTS:
            lines.append(f"  weights: {s['weights']}")
        if self.diverged_epoch is not None:
            lines.append(f"  DIVERGED in epoch {self.diverged_epoch + 1}: {self.divergence}")
        ran = max(self.epochs_run, 1)
        line = f"  loss {loss_text(self.eval_loss[0])} -> {loss_text(self.final_loss)}{self._chance()}"
        if self.extras.get("class_labels", True):  # regression targets have no accuracy
            evaluated = (self.extras.get("diverged_steps") or {}).get("cause") == "evaluation"
            line += (f", accuracy {accuracy_text(self.accuracy[0])} -> "
                     f"{final_accuracy_text(self.accuracy, self.diverged_epoch, evaluated)}")
        lines.append(line)
        stopped = self.extras.get("stopped")
        if stopped:
            after = self.update_ratio[stopped["epoch"]:self.epochs_run]
            moved = float(np.nanmax(after)) if after.size and np.any(np.isfinite(after)) else 0.0
            lines.append("  " + stopped_words(stopped, self.epochs_run, self.stack.has_head, s["weight_decay"] > 0,
                                              self.stack.depth, moved, _optimizer_state(s), self.stack.dtype))
        # the epochs that finished have a ratio; the one that diverged is said apart (it read as 0 / 0:
        # "weights of norm 0 that stay 0" of weights of norm 13.4 that blew up)
        done = self.epochs_run if self.diverged_epoch is None else self.diverged_epoch
        first = "the input layer's weights (W_in)" if self.stack.has_input_layer else "layer 0's weights"
        L = self.stack.depth
        stop = self.extras.get("diverged_steps") if self.diverged_epoch is not None else None
        if stop is None and self.diverged_epoch is not None:  # a history without the record of that epoch
            stop = dict(epoch=self.diverged_epoch, cause="unknown")
        last_first = None if stop is None else (stop.get("update_ratio_input") if self.stack.has_input_layer else
                                                (stop.get("update_ratio") or [None])[0])
        last_top = None if stop is None else (stop.get("update_ratio") or [None])[-1]
        words = [_then(_ratio_words(self.first_layer_ratio[:done]) if done else "", stop, last_first),
                 _then(_ratio_words(self.update_ratio[:done, -1], short=True) if done else "", stop, last_top, short=True)]
        lines.append(f"  {first} change by {words[0]}, layer {L - 1}'s (below the head) by {words[1]}")
        unchanged = self._unchanged_words(done)
        if unchanged:
            lines.append("  " + unchanged)
        rise = rising_words(self.eval_loss[:ran + 1] if self.diverged_epoch is None else [], s["lr"])
        if rise:
            lines.append("  " + rise)
        clip = self._clip_words()
        if clip:
            lines.append("  " + clip)
        decay = self._decay_words()
        if decay:
            lines.append("  " + decay)
        return "\n".join(lines)

    def _unchanged_words(self, done: int) -> str:
        """How many entries of the first weight matrix never changed over ``done`` epochs, when it
        is at least half of them and the gradient reached that layer: a float32 run's per-epoch change of
        3.3e-07 % was the few entries that moved (31 of 32 never did; float64 moved all 32 by
        1.9e-06 %), its other updates being below half a unit in the last place of their weights."""
        kept, size = self.extras.get("first_unchanged") or (0, 0)
        if not done or not size or 2 * kept < size:
            return ""
        which = "W_in" if self.stack.has_input_layer else "layer 0's weights"
        eps = float(np.finfo(self.stack.np_dtype).eps) / 2  # a unit roundoff: 2^-24, 2^-53
        return (f"{kept} of the {size} entries of {which} with a gradient at the start never changed in "
                f"{count(done, 'epoch')}: a step below half a unit in the last place of its weight "
                f"({self.stack.dtype}: about {100 * eps:.2g} % of it) is rounded away, so the change above is that "
                "of the entries that moved")

    def _clip_words(self) -> str:
        """In how many mini-batch steps the stack's clip changed a gradient."""
        tally, st = self.extras.get("clip_acted_steps"), self.stack
        if not tally or not tally[1]:
            return ""
        what = "the backward signal" if st.clip_on == "signal" else "the parameter gradients"
        return (f"the clip ({st.clip} {st.clip_threshold:g} on {st.clip_on}) changed {what} in "
                f"{tally[0]} of the {count(tally[1], 'mini-batch step')}")

    def _decay_words(self) -> str:
        """What weight decay does to the run. Under plain SGD with lr wd >= 1 its own factor
        1 - lr wd <= 0 rules every step, diverged or not (the review: wd 30 at lr 0.1 doubled every
        weight each step and the run DIVERGED without a word on the decay). Else, where it drives
        the updates at the end: its term wd ||W_l|| against the loss's gradient ||dL/dW_l|| on the
        whole data set after the last epoch, when the decay's is at least DECAY_DOMINATES times
        larger at every layer."""
        s, wd = self.settings, self.settings.get("weight_decay", 0.0)
        if not wd:
            return ""
        plain = not _is_adam(s) and not s.get("momentum")
        f = 1 - s["lr"] * wd
        w = frobenius_log10(np.asarray(self.params.W, dtype=np.float64))  # without overflow (W of 1e157)
        if plain and f <= 0:
            now = (f"; the weights end at ||W_l|| {_decades(np.min(w))} to {_decades(np.max(w))}"
                   if np.all(np.isfinite(w)) else "")
            return _decay_factor_words(f, s["lr"], wd, -(-s["n_samples"] // s["batch_size"])) + now
        if self.diverged_epoch is not None:
            return ""
        g = np.asarray(self.grad_log10[self.epochs_run], dtype=np.float64)
        share = math.log10(wd) + w - g  # log10 (wd ||W_l|| / ||dL/dW_l||); inf where the gradient is 0
        if not np.all(share >= math.log10(DECAY_DOMINATES)):
            return ""
        fin = np.isfinite(g)
        grads = (f"||dL/dW_l|| {_decades(np.min(g[fin]))} to {_decades(np.max(g[fin]))}" if fin.any() else
                 "||dL/dW_l|| exactly 0")
        step = f"; under plain SGD each step multiplies every weight by 1 - lr wd = {f:.4g}" if plain else ""
        head = (f"weight decay drives the updates, not the loss: after the last epoch wd ||W_l|| exceeds the loss's "
                f"gradient at every layer ({grads}, ||W_l|| {_decades(np.min(w))} to {_decades(np.max(w))})")
        last = self.update_ratio[self.epochs_run - 1] if self.epochs_run else np.zeros(0)
        if last.size and np.all(last == 0):  # lr 1e-300: 1 - lr wd rounds to 1, nothing moves
            return (f"{head}, but no weight of the stack changed in the last epoch: at lr={s['lr']:g} the steps are "
                    f"below {self.stack.dtype}'s resolution of the weights")
        return f"{head}, so the change per epoch above is mostly the weights shrinking{step}"

    def _chance(self) -> str:
        ref = chance_loss(self.stack.loss, self.stack.output_dim, self.extras.get("mean_prediction_loss"))
        return "" if ref is None else f" ({ref[0]}{' =' if ref[0].startswith('ln') else ':'} {ref[1]:.4f}{ref[2]})"


def _decay_factor_words(f: float, lr: float, wd: float, steps: int) -> str:
    """Plain SGD's weight decay at lr wd >= 1 (``f`` = 1 - lr wd <= 0): each step multiplies every
    weight by f before the loss's gradient step, which no loss can outweigh for long (``steps``:
    mini-batch steps per epoch)."""
    head = (f"weight decay rules every step: lr wd = {lr * wd:.4g} >= 1, and under plain SGD each step multiplies "
            f"every weight by 1 - lr wd = {f:.4g} before the loss's step")
    if f == 0:
        return head + (", so after each step every weight is -lr times that step's loss gradient (lr wd = 1 wipes "
                       "the rest)")
    if f > -1:
        return head + ", which overshoots zero: every weight flips sign at every step (lr wd < 2: it still shrinks)"
    if f == -1:
        return head + ", which flips every weight's sign at its size (lr wd = 2)"
    return (head + f", so the weights flip sign and grow {abs(f):.3g}-fold every step ({abs(f):.3g}^{steps} = "
            f"{abs(f) ** steps:.3g}-fold per epoch of {steps} steps): lr wd > 2 makes weight decay itself unstable; "
            "use a smaller weight decay or learning rate")


def rising_words(losses, lr: float, held_out: bool = False) -> str:
    """Where the loss went up, not down: it ended RISE times above its start (the steps
    overshoot: the learning rate is too large), or it rose again from its lowest value by more
    than RISE_UNDONE of the way it had come down, where that fall was more than RISE_FELL of the
    start (not the wobble of a loss that never left chance). ``losses``: after 0, 1, ... epochs
    (empty for a diverged run, which says so itself); ``held_out``: they are a held-out set's,
    which also rises where the net overfits its training data."""
    v = np.asarray(losses, dtype=np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)):
        return ""
    start, end, low = v[0], v[-1], int(np.argmin(v))
    what = "the held-out loss" if held_out else "the loss"
    overfit = " or the net overfits its training data" if held_out else ""
    if end > RISE * start:
        times = f"{end / start:.3g} times" if start > 0 else "above"
        return (f"{what} ended {times} where it started: the steps overshoot, lr={lr:g} is too large for this net "
                f"(try a smaller one){overfit}")
    if start - v[low] > RISE_FELL * start and end - v[low] > RISE_UNDONE * (start - v[low]):
        undone = (end - v[low]) / (start - v[low])
        return (f"{what} rose again after its lowest, {v[low]:.4g} after epoch {low}, undoing {100 * undone:.0f} % "
                f"of its fall: the later steps overshoot (lr={lr:g} may be too large there){overfit}")
    return ""


# The summary says the loss went up where the last loss is RISE times its first, or where it rose
# again from its lowest by RISE_UNDONE of a fall from the first of more than RISE_FELL of it.
RISE = 1.25
RISE_UNDONE = 0.25
RISE_FELL = 0.25


def _decades(v: float) -> str:
    """10^v with one decimal (10^-14.6; 10^-1.464e+16 beyond a million decades)."""
    return f"10^{v:.1f}" if abs(v) < 1e6 else f"10^{v:.4g}"


# Weight decay is named as what drives the updates where wd ||W_l|| exceeds ||dL/dW_l|| this many
# times at every layer after the last epoch.
DECAY_DOMINATES = 10.0


def _is_adam(settings: dict) -> bool:
    """Whether a run's ``settings`` are Adam's: by name (``optimizer="adam"``) or an ``Adam(...)``
    object (recorded as "Adam", with its betas); "SGD" with momentum 0 is plain SGD like "sgd"."""
    return str(settings.get("optimizer", "")).lower() == "adam" or "beta1" in settings


def _optimizer_state(settings: dict) -> str | None:
    """What keeps moving the weights after their gradient is 0: momentum's velocity, Adam's
    moments (None for plain SGD)."""
    if _is_adam(settings):
        return "Adam's moments"
    return "momentum's velocity" if settings.get("momentum") else None


def underflowed_layers(stack, params, X, res, dead: list[int]) -> dict:
    """The dead layers (``dead``) whose z is 0 for every sample because the forward pass
    underflowed, not because z <= 0: their biases are 0 and every product W_l[i, j] h_l[j] lies
    below half the dtype's smallest number, so each rounds to 0 and a tiny z's sign is lost
    (sigma_w 1e-200: z ~ 1e-400). Once a step has made a bias non-zero the forward pass carries
    no exponents (:func:`gradbench.engine.can_rescale_forward`). A layer above one of them whose
    input is exactly 0 lost its sign too; above a truly dead layer z = b = 0 is dead indeed.
    Returns ``{"layers": [...], "bound": log10 of the largest product of the lowest one}``
    (an upper bound from max |W_l| and, above layer 0, the RMS of h_l times sqrt(B N))."""
    found = {"layers": [], "bound": None}
    if stack.batch_norm or not dead:
        return found
    floor = math.log10(float(np.finfo(stack.np_dtype).smallest_subnormal)) - math.log10(2)  # 2^-1075: rounds to 0
    B, N = len(X), stack.width
    means, stds = res.act_mean.log10(), res.act_std.log10()
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for l in dead:
            if np.any(np.asarray(params.b[l]) != 0):
                continue  # z = b_l where the products vanish: its sign is real
            if l == 0:
                h = np.asarray(X, dtype=np.float64)
                if stack.has_input_layer:
                    h = h @ np.asarray(params.W_in, dtype=np.float64).T + np.asarray(params.b_in, dtype=np.float64)
                top_h = float(np.log10(np.max(np.abs(h))))
            else:
                m, sd = float(means[l - 1]), float(stds[l - 1])
                big = max(m, sd)
                top_h = -math.inf if big == -math.inf else big + 0.5 * math.log10(1 + 10 ** (2 * (min(m, sd) - big)))
                top_h += 0.5 * math.log10(B * N)
            bound = float(np.log10(np.max(np.abs(np.asarray(params.W[l], dtype=np.float64))))) + top_h
            if top_h == -math.inf and (l == 0 or l - 1 not in found["layers"]):
                continue  # an input of exact zeros: z = 0 truly
            if bound < floor:
                found["layers"].append(l)
                if found["bound"] is None:
                    found["bound"] = bound
    return found


def stopped_words(stopped: dict, epochs_run: int, head: bool, decay: bool = False, depth: int | None = None,
                  moved: float | None = None, state: str | None = None, dtype: str = "float64") -> str:
    """The summary's sentence for a run whose gradient became exactly 0 at every layer (of ``depth``).

    ``moved``: the largest change of a stack layer's weights in an epoch since then (%, the
    update ratio), ``state``: what moves them without a gradient (:func:`_optimizer_state`);
    with ``decay``, weight decay does too. Above a dead layer every sample's activations are
    the same (phi of the biases), so the output no longer depends on the input; the head's bias
    moves, and so do the head's weights and the biases of the layers above the dead one where
    those activations are not 0 (a dead layer 4 of 6 with one positive bias in layer 5 left
    dL/dW_out and dL/db_5 ~5e-5)."""
    e, dead = stopped["epoch"], stopped["dead_layers"]
    when = "from the start" if e == 0 else f"after the last epoch ({e})" if e >= epochs_run else f"from epoch {e} on"
    under = stopped.get("underflowed_layers") or []
    truly = [l for l in dead if l not in under]
    why = (f": every unit of layer{'s' if len(truly) > 1 else ''} {_layers(truly)} is dead (z <= 0 for "
           "every sample), so nothing passes back through " + ("them" if len(truly) > 1 else "it") if truly else "")
    if under:
        n, bound = len(under), stopped.get("underflow_log10")
        why = (f": every unit of layer{'s' if n > 1 else ''} {_layers(under)} has z exactly 0 for every sample, "
               f"by underflow, not because z <= 0 (layer {under[0]}'s biases are 0 and its products W h are at most "
               f"10^{bound:.1f}, below the smallest {dtype} number): the "
               "sign of a z that small is lost, so nothing passes back through " + ("them" if n > 1 else "it")
               + (f"; and layer{'s' if len(truly) > 1 else ''} {_layers(truly)} "
                  f"{'are' if len(truly) > 1 else 'is'} dead (z <= 0 for every sample)" if truly else ""))
    saturated = stopped.get("saturated_layers") or []
    if saturated and not dead:
        n = len(saturated)
        why = (f": every unit of layer{'s' if n > 1 else ''} {_layers(saturated)} is saturated so far (a huge "
               "|z|, or z overflowed to inf: weights grown huge) that its phi'(z) lies below 2^(-2^62), beyond any "
               "int64 exponent, so the gradient reads 0 where the true one is tiny but, for a finite z, not 0")
    left = epochs_run - e
    last = "the last epoch" if left == 1 else f"the last {left} epochs"
    movers = [w for w in (state, "weight decay" if decay else None) if w]
    tail = ""
    if left > 0 and movers and (moved is None or moved > 0):
        tail = (f"; in {last} no weight gradient reached the stack, and only {' and '.join(movers)} moved its weights"
                + (f" (by up to {moved:.3g} % in an epoch)" if moved else ""))
    elif left > 0:
        tail = f"; {last} changed no weight of the stack"
    bias = ""
    if head and dead:
        top = max(dead)
        moves = ("only the head's bias still gets a gradient" if depth is None or top == depth - 1 else
                 f"only the head and the biases of layer{'' if top + 2 == depth else 's'} "
                 f"{top + 1}{'' if top + 2 == depth else f' to {depth - 1}'} still get a gradient")
        bias = (f" (every sample now gets the same output, and {moves}: at best the loss reaches the best constant "
                "prediction's)")
    return f"STOPPED {when}: every layer's gradient on the whole data set is exactly 0{why}{tail}{bias}"


def chance_loss(loss: str, output_dim: int, mean_prediction_loss: float | None = None):
    """The loss of a prediction that knows nothing, as (name, value, note), or None when unknown.

    ``mean_prediction_loss`` is the loss of the best constant prediction on the training
    targets (:func:`train` records it: the targets' variance for mse, the entropy of the label
    frequencies for bce and softmax_ce). Without it, or when the labels are balanced, bce's is
    ln 2 (p = 1/2) and softmax_ce's ln C (uniform over the C = output_dim classes); mse's is
    unknown without it.
    """
    if loss == "mse":
        return None if mean_prediction_loss is None else ("predicting the targets' mean", mean_prediction_loss, "")
    if loss not in ("bce", "softmax_ce"):
        return None
    uniform = math.log(2) if loss == "bce" else math.log(output_dim)
    name = "ln 2" if loss == "bce" else f"ln {output_dim}"
    note = "" if loss == "bce" else f": uniform over the {output_dim} classes"
    if mean_prediction_loss is None or abs(mean_prediction_loss - uniform) <= 1e-12 * uniform:
        return name, uniform, note
    return "predicting the label frequencies", mean_prediction_loss, f"; {name} = {uniform:.4f} for balanced labels"


def _describe(stack: Stack, weights: str | None = None) -> str:
    """The stack in words, as the run report says it (:func:`gradbench.report.describe`: every
    field that changes the network when it differs from its default; ``weights``, where the
    starting weights came from, in place of the init scheme), the dtype when it is not float64."""
    return describe(asdict(stack), weights, dtype=stack.dtype != "float64")


def optimizer_words(settings: dict) -> str:
    """The optimiser's settings beside lr that change the run: momentum and weight decay when
    set, Adam's betas and eps where they differ from their defaults."""
    words = [f"momentum {settings['momentum']:g}"] if settings.get("momentum") else []
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}  # gradbench.optim.Adam's
    words += [f"{k} {settings[k]:g}" for k, v in defaults.items() if settings.get(k, v) != v]
    if settings.get("weight_decay"):
        words.append(f"weight decay {settings['weight_decay']:g}")
    return "".join(f", {w}" for w in words)


def loss_text(v: float) -> str:
    """A loss for the summary: 4 decimals from 1e-4 to 1e6 (0.6932, 307.3521), else 4
    significant digits (4.4e-05, 2.882e+200), so that neither 0.0000 nor 200 digits stand
    for a loss."""
    if not math.isfinite(v) or v == 0 or 1e-4 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


def final_accuracy_text(accuracy: np.ndarray, diverged_epoch: int | None, evaluated: bool = False) -> str:
    """The accuracy a run ended with, for a summary (``accuracy[e]``: after epoch e, 0 before
    training). After a divergence the parameters are what overflowed: the last accuracy before
    it is given as such ("0.86 after epoch 2, the last before the divergence"), none when the
    first epoch diverged: it stopped before its end, or, ``evaluated``, all its steps finished
    and the loss on the whole data set after it was not finite (its logits name no class)."""
    if diverged_epoch is None:
        return accuracy_text(accuracy[-1])
    if diverged_epoch == 0:
        return ("- (epoch 1's steps all finished; the loss on the whole data set after it is not finite)" if evaluated
                else "- (no epoch finished)")
    return f"{accuracy_text(accuracy[diverged_epoch])} after epoch {diverged_epoch}, the last before the divergence"


def accuracy_text(v: float) -> str:
    """An accuracy for a summary: "-" where there is none (NaN logits, no class labels)."""
    return f"{v:.2f}" if math.isfinite(v) else "-"


def _layer_ratios(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """100 * ||after_l - before_l|| / ||before_l|| for each leading index l, with the norms
    scaled by powers of two (:func:`gradbench.reference.norm_scaled`: the plain norms' bits
    where their squares neither overflow nor underflow), so that finite weights of 1e200 give
    a finite ratio, not inf or NaN."""
    L = before.shape[0]
    d = (after - before).reshape(L, -1)
    w = before.reshape(L, -1)
    out = np.empty(L)
    for l in range(L):
        (md, ed), (mw, ew) = norm_scaled(d[l]), norm_scaled(w[l])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out[l] = np.ldexp(100.0 * np.float64(md) / np.float64(mw), ed - ew)
    return out


# An epoch that holds at least this share of the summed per-epoch changes is named beside the
# average, which it would otherwise hide (a net that moved 2.6e34 % in one epoch and 0 after).
ONE_EPOCH_SHARE = 0.5


def _ratio_words(ratio, short: bool = False) -> str:
    """The per-epoch changes ``ratio`` (%, one per epoch run) in words: their average and (unless
    ``short``) largest over the epochs that have one, and the epochs that have none: weights that
    start an epoch at norm 0 (a zero-initialised branch or input layer) move by inf % of it, or by
    0 / 0 (NaN) where they stay at 0 (the review: "by inf %", and "by nan %" with a warning)."""
    r = np.asarray(ratio, dtype=np.float64)
    fin = np.isfinite(r)
    none = []
    for mask, why in ((np.isinf(r), "from weights of norm 0"), (np.isnan(r), "weights of norm 0 that stay 0")):
        k = np.flatnonzero(mask) + 1
        if k.size:
            which = f"epoch {k[0]}" if k.size == 1 else ("every epoch" if k.size == len(r) else
                                                          f"epochs {', '.join(map(str, k))}")
            none.append(f"{which}: {why}")
    if not fin.any():
        return f"no ratio ({'; '.join(none)})"
    words = f"{np.mean(r[fin]):.3g} %" + ("" if short else " per epoch on average")
    inner = "" if short else f"max {np.max(r[fin]):.3g} %{_one_epoch_words(r)}"
    if none:
        inner += ("; " if inner else "") + f"no ratio in {'; '.join(none)}"
    if inner:
        return f"{words} ({inner})"
    return words + _one_epoch_words(r, short=True)


def _then(words: str, stop: dict | None, value: float | None, short: bool = False) -> str:
    """``words`` (the finished epochs' changes, :func:`_ratio_words`; "" without one) and then what
    the epoch that diverged did (``stop``: :func:`_diverged_steps`, None when none did) to these
    weights, whose change over its steps is ``value`` (%; None where a weight is not finite): the
    steps it took before the mini-batch where it stopped, or, when all its steps finished, the
    change of the whole epoch, whose evaluation was not finite; ``short`` leaves out the why."""
    if stop is None:
        return words
    e, cause = stop["epoch"] + 1, stop.get("cause")
    if cause == "unknown":
        said = f"no ratio in epoch {e}, which diverged"
    elif value is None:
        said = f"no ratio in epoch {e}" + ("" if short else ": the weights turned non-finite"
                                           + (f" in mini-batch {stop['mini_batch']} of {stop['batches']}"
                                              if stop.get("mini_batch") else ""))
    elif not math.isfinite(value):  # weights of norm 0 before the epoch (0 / 0, or x / 0)
        said = f"no ratio in epoch {e}: " + ("weights of norm 0 that stay 0" if math.isnan(value) else
                                              "from weights of norm 0")
    elif cause == "evaluation":
        steps = "its one step" if stop["steps"] == 1 else f"all its {stop['steps']} steps"
        said = f"{value:.3g} % in epoch {e}" + ("" if short else f" ({steps}; then the loss on the whole data set "
                                                 "was not finite)")
    else:
        what = {"loss": "the loss", "gradient": "a gradient", "parameters": "the weights"}[cause]
        k, n, steps = stop["mini_batch"], stop["batches"], stop["steps"]
        if steps == 0:
            said = f"nothing in epoch {e}" + ("" if short else f": {what} turned non-finite in its first mini-batch, "
                                                               "before any step")
        elif short:
            said = f"{value:.3g} % in epoch {e}'s {count(steps, 'step')}"
        else:
            said = (f"{value:.3g} % in the {count(steps, 'step')} of epoch {e} before it stopped in mini-batch {k} "
                    f"of {n}, where {what} turned non-finite")
    return f"{words}; then {said}" if words else said


def _one_epoch_words(ratio, short: bool = False) -> str:
    """Where one epoch holds most of the per-epoch changes ``ratio`` (%, one per epoch run): which,
    and its share of their sum (else "")."""
    r = np.asarray(ratio, dtype=np.float64)
    fin = np.isfinite(r)
    if fin.sum() < 2:
        return ""
    total = float(np.sum(r[fin]))
    k = int(np.argmax(np.where(fin, r, -np.inf)))
    if not (total > 0 and math.isfinite(total) and r[k] >= ONE_EPOCH_SHARE * total):
        return ""
    rest = float(np.max(np.delete(np.where(fin, r, -np.inf), k)))
    if short:
        return f" ({r[k]:.3g} % in epoch {k + 1}: {100 * r[k] / total:.0f} % of the summed changes)"
    return (f", in epoch {k + 1}: {100 * r[k] / total:.0f} % of the summed changes, the other epochs at most "
            f"{rest:.3g} % each")


def train(
    stack: Stack,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 100,
    batch_size: int = 32,
    optimizer="sgd",
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    seed: int = 0,
    params: Params | None = None,
    backend: str = "auto",
    progress: bool = False,
    name: str = "",
    dataset: str = "custom",
    tensorboard=None,
) -> TrainResult:
    """Train ``stack`` on ``(X, y)`` with mini-batch gradients from :func:`gradbench.backprop`.

    Parameters
    ----------
    stack : Stack
        With ``input_dim == X.shape[1]`` (or ``width`` equal to it) and a head
        (``loss`` in mse / bce / softmax_ce).
    X, y : ndarray
        Features (B, D) and targets (B,): integer class labels, numbers in [0, 1] for bce,
        any finite numbers for mse with one output (accuracy: module docstring). Floats in the
        stack's dtype (as X), or integers that it holds exactly; nothing is cast.
    epochs, batch_size : int
        Passes over the data and mini-batch size (the last batch of an epoch may be smaller).
    optimizer : {"sgd", "momentum", "adam"} or an optimiser of :mod:`gradbench.optim`
        With ``lr`` (default 0.1), ``momentum`` and ``weight_decay`` (default 0) when given by
        name; an optimiser object (``SGD(...)``, ``Adam(...)``) carries its own, and giving them
        beside it is refused. The run uses a fresh copy of the object (its settings, none of its
        state): the object is not changed, and passing it again gives the same run.
    momentum : float, optional
        Of ``optimizer="momentum"`` only (default 0.9); with another optimizer it is refused
        (ValueError), not ignored.
    weight_decay : float, optional
        Coupled L2: ``weight_decay * w`` is added to the gradient of every parameter training
        updates (:func:`learnable`: W, b, the input layer, the head, and gamma/beta with batch
        norm, the slopes with PReLU), before momentum or Adam's moments.
    seed : int
        Parameters from ``init_params(stack, seed)`` (unless ``params`` is given) and the
        shuffling order from ``default_rng([seed, 1])``.
    params : Params, optional
        Start from these (copied; checked against the stack before any work), e.g. from
        :func:`gradbench.pretrain`. :class:`~gradbench.GeneratedParams` is refused: training
        updates stored weights (pass ``params.materialize()``).
    tensorboard : str or os.PathLike, optional
        Write TensorBoard event files there every epoch (per-layer gradient norms, update
        ratios, loss, gradient histograms; :mod:`gradbench.tensorboard_io`, needs tensorboardX).

    Returns
    -------
    TrainResult
        ``settings`` hold the run's settings as the optimiser applied them (its momentum, and
        Adam's ``beta1``, ``beta2``, ``eps``), ``weights`` (where the starting weights came
        from: :data:`INIT_WEIGHTS` or :data:`GIVEN_WEIGHTS`), ``data`` (None: your own ``X, y``;
        :func:`run_demo` and the command line record the :func:`gradbench.datasets.load` call
        that drew theirs) and ``pretrain`` (None;
        :func:`run_demo` records its pretraining there). Training stops at the first non-finite
        loss (of a mini-batch, or of the whole data set after an epoch), gradient or parameter
        and says where (``diverged_epoch``, ``divergence``); later entries of the history are NaN.
    """
    if not isinstance(stack, Stack):  # a Recurrent failed deep inside (no attribute 'depth'), a demo's name too
        from gradbench.recurrent import Recurrent

        hint = (": a recurrent net trains with gradbench.recurrent.train.train_recurrent" if isinstance(stack, Recurrent)
                else ": a demo runs by name with gradbench.run_demo" if isinstance(stack, str) else "")
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}{hint}")
    X = _check_data(stack, X, y, epochs, batch_size)
    epochs, batch_size = int(epochs), int(batch_size)  # np.uint8(5) would wrap around in the batch arithmetic
    check_seed(seed)  # the shuffling is default_rng([seed, 1]): an int, not a Generator
    opt = _optimizer_for(optimizer, lr, momentum, weight_decay)
    weights = INIT_WEIGHTS if params is None else GIVEN_WEIGHTS
    # the summary names where given weights came from in place of the init scheme that did not draw
    # them (a model's from_torch weights read "sigmoid, xavier_normal")
    origin = None if params is None else origin_words(params, stack)
    params = _start_params(stack, params, seed)
    tb = None
    if tensorboard is not None:  # checked (path, tensorboardX installed) before any work
        from gradbench.tensorboard_io import TrainWriter

        tb = TrainWriter(tensorboard, stack)
    labels = class_labels(stack.loss, stack.output_dim, y)
    hist = _History(stack, params, X, targets_for(stack, y), labels, epochs, backend, tb)
    settings = dict(
        name=name, dataset=dataset, n_samples=len(X), data=None, epochs=epochs, batch_size=batch_size,
        optimizer=optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
        lr=float(opt.lr), **optimizer_settings(opt),
        weight_decay=float(opt.weight_decay), seed=seed, backend=backend, weights=weights, pretrain=None,
    )
    from gradbench.cli.progress import epochs as progress_of_epochs  # here: the CLI package loads on use

    bar = progress_of_epochs(progress, epochs, name)
    rng = np.random.default_rng([seed, 1])
    clip_tally = [0, 0]  # mini-batch steps where the clip acted, steps
    start_first = _first_weights(params).copy()  # which of its entries ever moved (_unchanged_words)
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        first = hist.full_pass()
        hist.evaluate(0, first)
        # the entries of the first weight matrix with a gradient at the start (_unchanged_words)
        pulled = _first_grad(first) != 0
        for epoch in range(epochs):
            before = (params.W.copy(), None if params.W_in is None else params.W_in.copy(), params.W_out.copy())
            hist.loss[epoch], why, stop = _epoch(stack, params, X, hist.T, rng.permutation(len(X)), batch_size,
                                                 opt, backend, clip_tally)
            if not why:
                why = hist.after_epoch(epoch, before)
                stop = dict(mini_batch=None, batches=-(-len(X) // batch_size), cause="evaluation")
                stop["steps"] = stop["batches"]
            if why:
                hist.diverged, hist.why = epoch, why
                hist.diverged_steps = _diverged_steps(stack, params, epoch, before, stop)
                break
            if bar is not None:
                bar.count(epoch + 1, note=f"loss {hist.loss[epoch]:.4f}")
    if bar is not None:
        bar.__exit__(None, None, None)
    if tb is not None:
        tb.close()
    ran = epochs if hist.diverged is None else hist.diverged + 1  # the diverging epoch's steps were taken
    params = after(params, stack, f"{ran} epoch{'s' if ran != 1 else ''} of training")
    return TrainResult(
        stack=stack, params=params, settings=settings, loss=hist.loss, eval_loss=hist.eval_loss,
        accuracy=hist.accuracy, grad_log10=hist.grad_log10, update_ratio=hist.ratio,
        update_ratio_input=hist.ratio_in, update_ratio_head=hist.ratio_out, diverged_epoch=hist.diverged,
        divergence=hist.why, seconds=time.perf_counter() - t0,
        extras={**_reference(stack, hist.T), "class_labels": labels is not None, "stopped": hist.stopped(),
                "clip_acted_steps": clip_tally if stack.clip is not None else None,
                "diverged_steps": hist.diverged_steps, "weights_origin": origin,
                "first_unchanged": [int(np.count_nonzero((_first_weights(params) == start_first) & pulled)),
                                    int(np.count_nonzero(pulled))]},
    )


def _first_grad(res) -> np.ndarray:
    """The gradient of the first weight matrix (W_in, or layer 0's W) of a result, as mantissas:
    nonzero exactly where the gradient is."""
    g = res.grads
    return g.W_in.mantissa if g.W_in is not None else g.W.mantissa[0]


def _first_weights(params: Params) -> np.ndarray:
    """The first weight matrix the input meets: W_in, or layer 0's W."""
    return params.W_in if params.W_in is not None else params.W[0]


def _diverged_steps(stack: Stack, params: Params, epoch: int, before, stop: dict) -> dict:
    """What the epoch that diverged did before it stopped (``stop`` from :func:`_epoch`, or the
    evaluation after all its steps): ``epoch`` (0-based), ``mini_batch`` where it stopped (None
    when every step finished and the loss on the whole data set was not finite), ``batches``,
    ``steps`` applied, ``cause`` ("loss", "gradient", "parameters", "evaluation") and the update
    ratios of those steps, as ``update_ratio`` (per layer), ``update_ratio_input`` (None without
    an input layer) and ``update_ratio_head``, in percent; all None where a weight is not finite.
    The history's arrays keep NaN for that epoch: its ratio, of a part of an epoch or of weights
    whose loss is not finite, is not one of the per-epoch ratios."""
    W0, Win0, Wout0 = before
    finite = all(all_finite(getattr(params, k)) for k in learnable(stack))
    out = dict(epoch=epoch, **stop, update_ratio=None, update_ratio_input=None, update_ratio_head=None)
    if finite:
        out["update_ratio"] = _layer_ratios(W0, params.W).tolist()
        if Win0 is not None:
            out["update_ratio_input"] = float(_layer_ratios(Win0[None], params.W_in[None])[0])
        out["update_ratio_head"] = float(_layer_ratios(Wout0[None], params.W_out[None])[0])
    return out


def _optimizer_for(optimizer, lr, momentum, weight_decay):
    """The optimiser a run uses, checked before any work: one made by name, or a fresh copy of
    an optimiser object of :mod:`gradbench.optim` (its settings, none of its state)."""
    if isinstance(optimizer, str):
        check_choice("optimizer", optimizer, OPTIMIZERS)
    elif not isinstance(optimizer, (SGD, Adam)):
        got = (f"the class {optimizer.__name__} (pass an instance: {optimizer.__name__}(lr=...))"
               if isinstance(optimizer, type) else f"{type(optimizer).__name__} {optimizer!r}")
        raise TypeError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or an optimiser of "
                        f"gradbench.optim (SGD(...), Adam(...)), got {got}")
    momentum = resolve_momentum(optimizer, momentum)
    if not isinstance(optimizer, str):
        given = [f"{k}={v!r}" for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} given beside optimizer={type(optimizer).__name__}(...), which "
                             "carries its own: give them to the optimiser itself")
        return optimizer.fresh()
    return make_optimizer(optimizer, 0.1 if lr is None else lr, momentum, 0.0 if weight_decay is None else weight_decay)


def optimizer_settings(opt) -> dict:
    """The settings of the optimiser a run applied, as training results record them (and
    :func:`optimizer_words` says them): momentum (0 for Adam and plain SGD), and Adam's beta1,
    beta2 and eps."""
    adam = dict(beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps) if isinstance(opt, Adam) else {}
    return dict(momentum=float(getattr(opt, "momentum", 0.0)), **adam)


def _start_params(stack: Stack, params, seed: int) -> Params:
    """The weights a run starts from: ``init_params(stack, seed)``, or a copy of ``params``
    after checking it against the stack (shapes, dtype, finite; ValueError / TypeError naming
    ``params``)."""
    if params is None:
        return init_params(stack, seed)
    check_stored_params(stack, params, "training")
    return params.copy()


def _reference(stack: Stack, T: np.ndarray) -> dict:
    """The loss of the best constant prediction on the training targets ``T`` (the reference
    :meth:`TrainResult.summary` and the loss plots show beside the loss, :func:`chance_loss`):
    mse their variance, averaged over the outputs as the loss averages; bce the entropy of the
    mean target of each output, averaged likewise; softmax_ce the entropy of the class
    frequencies. Nothing for other losses."""
    if stack.loss == "mse":  # targets beyond ~1e154: a variance past float64's range, inf (no warning)
        with np.errstate(over="ignore", invalid="ignore"):
            return {"mean_prediction_loss": float(np.mean(np.var(np.asarray(T, dtype=np.float64), axis=0)))}
    from scipy.special import entr  # -x ln x, 0 at x = 0 (SciPy is imported where it is used)

    if stack.loss == "bce":
        p = np.mean(np.asarray(T, dtype=np.float64), axis=0)
        return {"mean_prediction_loss": float(np.mean(entr(p) + entr(1.0 - p)))}
    if stack.loss == "softmax_ce":
        freq = np.bincount(np.asarray(T).ravel(), minlength=stack.output_dim) / np.asarray(T).size
        return {"mean_prediction_loss": float(np.sum(entr(freq)))}
    return {}


def check_training(stack: Stack, X, y, epochs: int, batch_size: int) -> None:
    """The checks :func:`train` makes of its stack, data, epochs and batch size, without training
    (ValueError naming the parameter)."""
    _check_data(stack, X, y, epochs, batch_size)


def _check_data(stack: Stack, X, y, epochs, batch_size) -> np.ndarray:
    """Everything train() is given, checked before any work; returns X as a C-contiguous array."""
    if not stack.has_head:
        raise ValueError("training needs a head: give the Stack loss='bce', 'mse' or 'softmax_ce'")
    X = check_array("X", X, None, stack.np_dtype)
    if X.ndim != 2 or X.shape[1] != stack.d_in:
        raise ValueError(
            f"X has shape {X.shape} but the stack expects {stack.d_in} features: "
            f"use Stack(..., input_dim={X.shape[1] if X.ndim == 2 else '?'})"
        )
    if len(X) < 1:
        raise ValueError(f"X has no samples (shape {X.shape}): training needs at least one")
    check_labels(stack, y, len(X))
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    # the history: ||dL/dW_l|| and update ratios per layer, six numbers per epoch besides
    check_history(epochs, 16 * stack.depth + 64, "the training history")
    if stack.batch_norm and (min(batch_size, len(X)) < 2 or len(X) % batch_size == 1):
        raise ValueError(
            f"batch_norm=True needs mini-batches of at least 2 samples; batch_size={batch_size} with {len(X)} samples "
            "leaves a batch of 1 (its batch statistics are degenerate): choose another batch_size")
    return X


def check_labels(stack, y, n: int, name: str = "y") -> None:
    """``y``: one label per row of X; integer classes in [0, output_dim) for softmax_ce and
    one-hot mse, numbers in [0, 1] for bce, finite numbers for mse with one output (nothing
    truncated or cast behind the caller's back). ``stack``: a Stack or a Recurrent (its loss,
    output_dim and dtype); ``name`` names ``y`` in the messages."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(y).__name__}")
    refuse_masked(name, y)
    check_aligned(name, y)
    if y.shape != (n,):
        col = f" (a column: pass {name}[:, 0])" if y.shape == (n, 1) else ""
        raise ValueError(f"{name} must hold one label per row of X, shape ({n},), got {y.shape}{col}")
    if stack.loss == "softmax_ce" or (stack.loss == "mse" and stack.output_dim > 1):
        what = f"loss={stack.loss!r}" + (f" with output_dim={stack.output_dim} (one-hot)" if stack.loss == "mse" else "")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class labels for {what}, got dtype {y.dtype}")
        if n and (y.min() < 0 or y.max() >= stack.output_dim):
            raise ValueError(f"{name} must lie in [0, {stack.output_dim}) (output_dim) for {what}, got [{y.min()}, {y.max()}]")
        return
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise TypeError(f"{name} must hold numbers for loss={stack.loss!r}, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or Inf")
    if np.issubdtype(y.dtype, np.floating) and y.dtype != stack.np_dtype:  # as X, and backprop's targets
        raise TypeError(f"{name} is {y.dtype} but the net computes in {stack.dtype}: pass {name}.astype({stack.dtype!r}) "
                        f"(nothing is cast behind your back) or a net with dtype={y.dtype.name!r}")
    if np.issubdtype(y.dtype, np.integer) and n:
        exact = 2 ** (np.finfo(stack.np_dtype).nmant + 1)  # integers the dtype holds exactly
        big = max(int(y.max()), -int(y.min()))  # in integers: int64 near 2^53 would round as floats
        if big > exact:
            raise ValueError(f"{name} holds integers up to {big}, beyond what {stack.dtype} holds exactly (2^"
                             f"{np.finfo(stack.np_dtype).nmant + 1} = {exact}): pass {name} as {stack.dtype} values if "
                             "their rounding is meant")
    if stack.loss == "bce" and n and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1] for loss='bce', got [{y.min()}, {y.max()}]")


def _epoch(stack: Stack, params: Params, X, T, order, batch_size: int, opt, backend: str,
           clip_tally: list | None = None) -> tuple[float, str, dict | None]:
    """One pass over the mini-batches in ``order``; returns (mean loss, why it diverged or "",
    where it stopped or None: ``mini_batch`` (1-based) of ``batches``, the ``steps`` applied
    before it stopped and the ``cause``, "loss", "gradient" or "parameters").

    Stops at the first non-finite loss, gradient or parameter (the loss is then NaN unless the
    loss itself was the first to go). ``clip_tally`` [steps where the stack's clip changed a
    gradient (a signal clip: dL/dh_l at some layer, ``Result.signal_clip_acted``), steps]: added to.
    """
    pdict, names = dict(params.items()), learnable(stack)
    total, count = 0.0, 0
    batches = -(-len(order) // batch_size)
    for j, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        res = backprop(stack, params, X[idx], T[idx], backend=backend)
        total += res.loss * len(idx)
        count += len(idx)
        where = f" in mini-batch {j + 1} of {batches}"
        stop = dict(mini_batch=j + 1, batches=batches, steps=j)
        if not math.isfinite(res.loss):
            return total / count, _why_loss(res, where=where), {**stop, "cause": "loss"}
        if clip_tally is not None and stack.clip is not None:
            acted = (res.signal_clip_acted.any() if stack.clip_on == "signal" else
                     res.extras.get("param_clip_acted", False))
            clip_tally[0] += bool(acted)
            clip_tally[1] += 1
        grads = {k: g.to_float(stack.np_dtype, warn=False) for k, g in res.grads.items() if k in names}
        bad = [k for k, g in grads.items() if not all_finite(g)]
        if bad:
            return math.nan, f"gradient of {', '.join(bad)} overflowed {stack.dtype}{where}", {**stop, "cause": "gradient"}
        opt.step(pdict, grads)
        bad = [k for k in names if not all_finite(pdict[k])]
        if bad:
            return (math.nan, f"parameters {', '.join(bad)} became non-finite after the update{where}",
                    {**stop, "steps": j + 1, "cause": "parameters"})
    return total / max(count, 1), "", None


class _History:
    """What train() records per epoch (TrainResult's arrays) and the evaluation on the whole set."""

    def __init__(self, stack, params, X, T, labels, epochs, backend, tb):
        L = stack.depth
        self.stack, self.params, self.X, self.T, self.labels, self.backend, self.tb = (
            stack, params, X, T, labels, backend, tb)
        self.loss = np.full(epochs, np.nan)
        self.eval_loss = np.full(epochs + 1, np.nan)
        self.accuracy = np.full(epochs + 1, np.nan)
        self.grad_log10 = np.full((epochs + 1, L), np.nan)
        self.ratio = np.full((epochs, L), np.nan)
        self.ratio_in = np.full(epochs, np.nan)
        self.ratio_out = np.full(epochs, np.nan)
        self.diverged, self.why = None, ""
        self.diverged_steps: dict | None = None  # what the epoch that diverged did (_diverged_steps)
        self.dead_layers: dict[int, list[int]] = {}  # epoch -> layers with every unit dead, where no gradient is left
        self.saturated_layers: dict[int, list[int]] = {}  # ... and with every unit saturated (RESCUE activations)
        self.underflowed: dict[int, dict] = {}  # ... and the dead layers whose z is 0 by underflow (underflowed_layers)

    def stopped(self) -> dict | None:
        """Where training stopped moving: the first evaluation from which every later one has an
        exactly zero gradient at every layer, and the layers whose units were all dead there."""
        ran = len(self.grad_log10) if self.diverged is None else self.diverged + 1
        zero = [bool(np.all(self.grad_log10[e] == -np.inf)) for e in range(ran)]
        if not zero or not zero[-1]:
            return None
        e = len(zero) - 1
        while e > 0 and zero[e - 1]:
            e -= 1
        under = self.underflowed.get(e, {"layers": [], "bound": None})
        return {"epoch": e, "dead_layers": self.dead_layers.get(e, []),
                "saturated_layers": self.saturated_layers.get(e, []),
                "underflowed_layers": under["layers"], "underflow_log10": under["bound"]}

    def full_pass(self):
        """backprop on the whole data set with the current parameters."""
        return backprop(self.stack, self.params, self.X, self.T, backend=self.backend)

    def evaluate(self, e: int, res) -> None:
        """Record entry ``e`` (0: before training) of the evaluation from the full pass ``res``."""
        self.eval_loss[e] = res.loss
        # the derivative: the clip bounds a step's update, and a pass that updates nothing has none
        # (the clipped norm recorded 10^-0.7 where dL/dW_l was 10^3.0)
        self.grad_log10[e] = res.derivative_norm.log10()
        if np.all(self.grad_log10[e] == -np.inf):
            self.dead_layers[e] = np.flatnonzero(np.asarray(res.dead) >= 1).tolist()
            self.underflowed[e] = underflowed_layers(self.stack, self.params, self.X, res, self.dead_layers[e])
            if self.stack.activation in RESCUE:  # phi' beyond any exponent: 0 where the true one is not
                self.saturated_layers[e] = np.flatnonzero(np.asarray(res.saturation) >= 1).tolist()
        h = res.output.to_float(np.float64, warn=False)
        self.accuracy[e] = accuracy(self.stack, self.params, h, self.labels)
        if self.tb is not None:
            self.tb.evaluation(e, res, self.accuracy[e])

    def after_epoch(self, epoch: int, before) -> str:
        """Record epoch ``epoch`` (0-based) after its last step; returns why the run diverged
        ("" if not): a non-finite loss on the whole data set, which is then the epoch's loss,
        and nothing else of the epoch is recorded."""
        res = self.full_pass()
        if not math.isfinite(res.loss):
            self.loss[epoch] = res.loss
            return _why_loss(res, "the loss on the whole data set after the epoch")
        W0, Win0, Wout0 = before
        p = self.params
        self.ratio[epoch] = _layer_ratios(W0, p.W)
        if Win0 is not None:
            self.ratio_in[epoch] = _layer_ratios(Win0[None], p.W_in[None])[0]
        self.ratio_out[epoch] = _layer_ratios(Wout0[None], p.W_out[None])[0]
        self.evaluate(epoch + 1, res)
        if self.tb is not None:
            self.tb.epoch(epoch + 1, self.loss[epoch], self.ratio[epoch], self.ratio_in[epoch], self.ratio_out[epoch])
        return ""


def _why_loss(res, what: str = "loss", where: str = "") -> str:
    """Why a loss is not finite: where the forward pass turned non-finite, or, when it stayed
    finite, what overflowed after it (the head's outputs: logits of 3e232 times 7e232)."""
    first = res.first_nonfinite_forward
    if first is not None:
        why = f"the forward activations first turned non-finite at layer {first}'s output"
        if first > 0 and res.stack.activation == "relu":
            why += "; ReLU outputs 0 for z = -inf, so pre-activations below it may have overflowed already"
    else:  # training needs a head
        why = "the stack's forward pass is finite: the head's outputs, or the loss of them, overflowed"
    return f"{what} became {res.loss}{where} ({why})"


# ------------------------------------------------------------------ the classic demonstrations
@dataclass(frozen=True)
class Demo:
    """A named, seeded training run: the stack, the data and the training settings."""

    name: str
    title: str
    stack: dict
    train: dict
    dataset: str = "moons"
    n_samples: int = 200
    noise: float = 0.1
    data_seed: int = 0
    pretrain: dict | None = None  # settings of gradbench.pretrain before training (fine-tuning)

    def make_stack(self, **overrides) -> Stack:
        kw = dict(input_dim=2, loss="bce", output_dim=1)
        kw.update(self.stack)
        kw.update(overrides)
        return Stack(**kw)

    def _data_keywords(self) -> dict:
        return {"noise": self.noise} if self.dataset == "moons" else {}

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        return datasets.load(self.dataset, self.n_samples, seed=self.data_seed, **self._data_keywords())

    def data_recipe(self) -> str:
        """The call that draws :meth:`data` (a training run's ``settings["data"]``)."""
        return datasets.recipe(self.dataset, self.n_samples, self.data_seed, **self._data_keywords())


# One deep net and its remedies, all on the same two-moons data (200 samples, noise 0.1) with
# plain SGD, lr 0.1, mini-batches of 20, 100 epochs (Adam would rescale the tiny gradients and
# hide the vanishing). The measured outcomes are in the docstring of `run_demo`.
_DEEP = dict(depth=10, width=16, activation="sigmoid", init="xavier_normal")
_SGD = dict(optimizer="sgd", lr=0.1, batch_size=20, epochs=100, seed=0)

DEMOS: dict[str, Demo] = {}


def _register(demo: Demo) -> None:
    DEMOS[demo.name] = demo


_register(Demo("deep-sigmoid", "10 sigmoid layers, Xavier init: stuck at ln 2", _DEEP, _SGD))
_register(Demo("shallow-sigmoid", "2 sigmoid layers: trains", {**_DEEP, "depth": 2}, _SGD))
_register(Demo("relu-he", "10 ReLU layers, He init", {**_DEEP, "activation": "relu", "init": "he_normal"}, _SGD))
_register(Demo("batchnorm", "10 sigmoid layers with batch norm", {**_DEEP, "batch_norm": True}, _SGD))
_register(Demo("residual", "10 sigmoid layers, residual every layer", {**_DEEP, "residual": 1}, _SGD))
_register(Demo("xavier-tanh", "10 tanh layers, Xavier init", {**_DEEP, "activation": "tanh"}, _SGD))
_EXPLODE = dict(depth=10, width=16, activation="relu", init="he_normal", sigma_w=3.0)
_register(Demo("exploding", "10 ReLU layers, large init (sigma_w=3): loss turns non-finite", _EXPLODE, _SGD))
_register(Demo(
    "exploding-clipped", "the same net with gradient clipping by global norm",
    {**_EXPLODE, "clip": "norm", "clip_threshold": 1.0, "clip_on": "global"}, _SGD,
))
_register(Demo("adam", "10 sigmoid layers, Xavier init, Adam lr 1e-3: per-parameter step sizes", _DEEP,
               {**_SGD, "optimizer": "adam", "lr": 1e-3}))
_register(Demo("layerwise-pretraining", "10 sigmoid layers pretrained one at a time as autoencoders, then fine-tuned",
               _DEEP, _SGD, pretrain=dict(epochs=100, optimizer="adam", lr=0.01)))


def run_demo(name: str, /, *, backend: str = "auto", progress: bool = False, dtype: str | None = None,
             **overrides) -> TrainResult:
    """Run one of :data:`DEMOS` (``overrides`` change training settings, e.g. ``epochs``: the
    keywords of :func:`train` but ``name`` and ``dataset``, which the demo brings).

    ``dtype`` ("float64" or "float32"; None: the demo's, float64) is the stack's: the weights are
    drawn and trained in it, on the demo's data points cast to it (drawn in float64 by the
    recorded ``data`` call), as ``gradbench train --dtype float32`` trains your own stack.

    layerwise-pretraining pretrains first (``gradbench.pretrain(stack, X, seed=seed, **demo.pretrain)``,
    from ``params`` when they are given, else from ``init_params(stack, seed)``) and fine-tunes
    the result; its ``settings`` record it (``weights``, ``pretrain``).

    Outcomes with seeds 0-4 (tests/test_demos.py asserts them with margins); "moves" is the
    per-epoch change of the first weight matrix, 100 * ||Delta W|| / ||W||:

    ================== ====================================== =====================================
    deep-sigmoid       loss 0.694-0.738 in every one of the    first layer moves <= 2.3e-5 % per
                       100 epochs, ends at ln 2 +- 0.001       epoch; accuracy 0.50
    shallow-sigmoid    final loss 0.272-0.276                  moves ~1-3 % per epoch
    relu-he            final loss 0.0001-0.022                 accuracy 1.00
    batchnorm          final loss 0.012-0.020                  accuracy 1.00
    residual           final loss 0.009-0.31                   accuracy 0.86-1.00
    xavier-tanh        final loss 0.0008-0.0011                accuracy 1.00
    exploding          loss NaN in epoch 1 (initial loss 307)
    exploding-clipped  finite; 307 -> 100x lower or more       chaotic: the last bits of a gradient
                       (the README's table: where it ends      move it, with NumPy's BLAS kernels
                       depends on NumPy's BLAS kernels)        (Haswell: seed 0 0.68, at chance)
    adam               final loss 0.345-0.355 (PyTorch's Adam:  first layer moves ~1 % per epoch
                       the same to 1e-10)
    layerwise-         pretrained (gradbench.pretrain), then   log10 ||dW_0|| -1.5..-1.8 at the
    pretraining        the deep-sigmoid SGD: 0.014-0.28        start (random init: -6.0..-7.3)
    ================== ====================================== =====================================
    """
    check_choice("demo", name, tuple(DEMOS))
    _check_overrides(overrides)
    demo = DEMOS[name]
    X, y = demo.data()
    kw = dict(demo.train)
    kw.update(overrides)
    stack = demo.make_stack() if dtype is None else demo.make_stack(dtype=dtype)
    X = X.astype(stack.np_dtype, copy=False)
    if demo.pretrain is None:
        r = train(stack, X, y, backend=backend, progress=progress, name=name, dataset=demo.dataset, **kw)
        r.settings["data"] = demo.data_recipe()
        return r
    # greedy layer-wise pretraining (gradbench.pretrain), from the given params if any, then fine-tuning
    from gradbench.pretrain import pretrain

    start = kw.pop("params", None)
    pre = {**demo.pretrain, "seed": kw.get("seed", 0)}  # the keywords of the pretrain call
    kw["params"] = pretrain(stack, X, params=start, **pre)
    r = train(stack, X, y, backend=backend, progress=progress, name=name, dataset=demo.dataset, **kw)
    words = ", ".join(f"{k}={v!r}" for k, v in demo.pretrain.items())
    r.settings.update(data=demo.data_recipe(), weights=f"gradbench.pretrain(stack, X, {words}, seed=seed"
                              + (", params=given)" if start is not None else ")"), pretrain=pre)
    return r


def _check_overrides(overrides: dict) -> None:
    """run_demo's overrides: keywords of :func:`train` that change training (ValueError naming
    the others and the allowed ones)."""
    allowed = [k for k, p in inspect.signature(train).parameters.items()
               if p.kind is p.KEYWORD_ONLY and k not in ("backend", "progress", "name", "dataset")]
    bad = [k for k in overrides if k not in allowed]
    if bad:
        theirs = [k for k in bad if k in ("name", "dataset")]
        why = (f" ({', '.join(theirs)}: the demo brings its own; train your own stack with gradbench.train for "
               "other data)" if theirs else "")
        raise ValueError(f"run_demo does not take {', '.join(bad)}{why}; the overrides are {', '.join(allowed)}")
