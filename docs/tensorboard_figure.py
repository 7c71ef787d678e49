"""Draw docs/tensorboard.png: what TensorBoard shows for two training runs, from their event files.

Runs ``gradbench train --demo deep-sigmoid,layerwise-pretraining --tensorboard DIR``'s Python
equivalent, reads the event files back with the ``tensorboard`` package's EventAccumulator (as
TensorBoard does) and plots the scalars of its Scalars tab: the loss and log10 ||dL/dW_l|| per
layer against the epoch. Run: ``python docs/tensorboard_figure.py`` (needs tensorboardX,
tensorboard and matplotlib).
"""

import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import gradbench as gb  # noqa: E402

RUNS = {"deep-sigmoid": "random init: stuck at ln 2", "layerwise-pretraining": "pretrained layer by layer"}


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            gb.run_demo(name, tensorboard=os.path.join(tmp, name))
        fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
        for i, (name, label) in enumerate(RUNS.items()):
            acc = EventAccumulator(os.path.join(tmp, name), size_guidance={"scalars": 0})
            acc.Reload()
            ev = acc.Scalars("loss/eval")
            axes[0].plot([e.step for e in ev], [e.value for e in ev], label=f"{name} ({label})")
            tags = sorted(t for t in acc.Tags()["scalars"] if t.startswith("grad_log10/"))
            cmap = plt.get_cmap("viridis")
            for j, tag in enumerate(tags):
                ev = acc.Scalars(tag)
                axes[1 + i].plot([e.step for e in ev], [e.value for e in ev], color=cmap(j / max(len(tags) - 1, 1)),
                                 label=tag.split("/")[1] if j in (0, len(tags) - 1) else None)
            axes[1 + i].set_title(f"grad_log10/layer_*: {name}")
            axes[1 + i].set_xlabel("epoch (step)")
            axes[1 + i].set_ylabel("log10 ||dL/dW_l||")
            axes[1 + i].set_ylim(-9, 0.5)
            axes[1 + i].legend(loc="lower right", fontsize=8)
        axes[0].set_title("loss/eval")
        axes[0].set_xlabel("epoch (step)")
        axes[0].legend(fontsize=8)
        fig.suptitle("TensorBoard scalars written by gb.train(..., tensorboard=DIR), read back from the event files")
        fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "tensorboard.png"))
