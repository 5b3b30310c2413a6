"""Training curves from ``history.h5`` files: loss and accuracy per epoch, several runs overlaid."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.figure import Figure


def plot_histories(histories: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """One row, two panels (loss, accuracy in %); one colour per run, solid = test, dashed = train.

    histories: run label -> columns as stored by :mod:`alignsam_diag.store.history`.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, (label, h) in enumerate(histories.items()):
        colour = f"C{i}"
        for split, style in (("test", "-"), ("train", "--")):
            loss_ax.plot(h["epoch"], h[f"{split}_loss"], style, color=colour, label=f"{label} ({split})")
            acc_ax.plot(h["epoch"], 100 * np.asarray(h[f"{split}_acc"]), style, color=colour, label=f"{label} ({split})")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    acc_ax.legend(fontsize="small")
    return fig

