"""Training curves from ``history.h5`` files: loss and accuracy per epoch, several runs overlaid."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .style import colours

SPLITS = (("test", "-"), ("train", "--"))  # split, line style


def plot_histories(histories: Mapping[str, Mapping[str, np.ndarray]],
                   optimizers: Optional[Sequence[Optional[str]]] = None) -> Figure:
    """One row, two panels (cross-entropy loss, accuracy in %) over epochs; one colour per run
    (:func:`alignsam_diag.plots.style.colours` of ``optimizers``, the runs' optimizer names in
    the order of ``histories``), solid = test, dashed = train.

    histories: run label -> columns as stored by :mod:`alignsam_diag.store.history`."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    run_colours = colours(optimizers or [None] * len(histories))
    for (label, h), colour in zip(histories.items(), run_colours):
        for split, style in SPLITS:
            loss_ax.plot(h["epoch"], h[f"{split}_loss"], style, color=colour, label=f"{label} ({split})")
            acc_ax.plot(h["epoch"], 100 * np.asarray(h[f"{split}_acc"]), style, color=colour,
                        label=f"{label} ({split})")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    runs = [Line2D([], [], color=colour, label=label) for label, colour in zip(histories, run_colours)]
    splits = [Line2D([], [], color="black", linestyle=style, label=split) for split, style in SPLITS]
    acc_ax.legend(handles=runs + splits, fontsize="small")
    return fig
