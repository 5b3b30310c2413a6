"""The paper's Figure 1: cosine_b, cosine_a and change over training, one curve per run.

Two sources, freely mixed in one figure: a ``cosine`` result file (one value per checkpoint: the
mean over the seeded batch pairs, with a ±1 std band) and the step log of ``train
--track-cosine-every`` in a run's ``history.h5`` (one value per logged step: the raw points faint,
a moving average over about one epoch drawn through them).

change = (cosine_a − cosine_b)/cosine_a is a ratio that explodes wherever cosine_a is near 0, so
its curve is the change *of the curves* of panels (a) and (b) (the means, or the moving
averages), not a mean of per-step or per-pair ratios; the raw per-step values are drawn faint
within the range the curves need, those beyond it counted in the panel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..errors import UserError
from ..store.alignment import CosineRecord, read_records, stored_kind
from ..store.history import history_optimizer
from ..store.tracking import StepLog, read_log
from .style import colours

PANELS = (("cosine_b", "(a) before the update: cosine_b"), ("cosine_a", "(b) after the update: cosine_a"),
          ("change", "(c) change = (cos_a − cos_b) / cos_a"))


@dataclass
class CosineCurve:
    """One run's values over epochs.

    epoch: (n,) the epochs completed before each measured step. cosine_b, cosine_a: (n,) the
    curve's values (means over pairs, or moving averages of ``raw``). std: (n,) per quantity, the
    band of a per-checkpoint curve (None for a step log). raw: the step log's own values per
    quantity (None for a per-checkpoint curve).
    """

    epoch: np.ndarray
    cosine_b: np.ndarray
    cosine_a: np.ndarray
    std: Optional[dict[str, np.ndarray]] = None
    raw: Optional[dict[str, np.ndarray]] = None

    @property
    def change(self) -> np.ndarray:
        """(cosine_a − cosine_b)/cosine_a of the curves (NaN where cosine_a is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.cosine_a != 0, (self.cosine_a - self.cosine_b) / self.cosine_a, np.nan)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the ``window`` values centred on each point (fewer at the ends, where the window
    is cut off), ignoring NaN; (n,) from (n,)."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    index = np.arange(len(values))
    low, high = np.clip(index - (window - 1) // 2, 0, None), np.clip(index + window // 2 + 1, None, len(values))
    with np.errstate(invalid="ignore"):
        return (sums[high] - sums[low]) / (counts[high] - counts[low])


def curve_of_log(log: StepLog, window_epochs: float = 1.0) -> CosineCurve:
    """A step log's curve: moving averages over ``window_epochs`` epochs of logged steps."""
    per_epoch = log.steps_per_epoch / log.every
    window = max(1, round(window_epochs * per_epoch))
    raw = {name: log.columns[name] for name in ("cosine_b", "cosine_a", "change")}
    return CosineCurve(log.columns["epoch"], moving_average(raw["cosine_b"], window),
                       moving_average(raw["cosine_a"], window), raw=raw)


def curve_of_records(records: Sequence[CosineRecord]) -> CosineCurve:
    """The per-checkpoint curve of one run's records (x: each checkpoint's epoch, or its position
    when it records none)."""
    epoch = np.array([r.epoch if r.epoch is not None else i for i, r in enumerate(records)], dtype=np.float64)
    order = np.argsort(epoch, kind="stable")
    pick = [records[i] for i in order]
    means = {q: np.array([r.mean(q) for r in pick]) for q in ("cosine_b", "cosine_a")}
    std = {q: np.array([r.std(q) for r in pick]) for q in ("cosine_b", "cosine_a")}
    return CosineCurve(epoch[order], means["cosine_b"], means["cosine_a"], std=std)


def _limits(curves: Sequence[CosineCurve]) -> tuple[float, float]:
    """The change panel's y-range: the 5–95 % range of the curves' values and of the raw values,
    with a margin (where cosine_a crosses 0 the ratio leaves any range; that part is cut off)."""
    values = [np.percentile(v[np.isfinite(v)], [5, 95]) for c in curves
              for v in (c.change, *([c.raw["change"]] if c.raw is not None else [])) if np.isfinite(v).any()]
    span = np.concatenate([np.zeros(1), *values])
    low, high = float(span.min()), float(span.max())
    margin = 0.15 * max(high - low, 1e-3)
    return low - margin, high + margin


def plot_cosines(curves: dict[str, CosineCurve], optimizers: Optional[Sequence[Optional[str]]] = None) -> Figure:
    """Three panels over epochs — (a) cosine_b, (b) cosine_a, (c) change — one colour per run
    (:func:`alignsam_diag.plots.style.colours` of ``optimizers``, in the order of ``curves``, whose
    keys are the legend labels)."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    axes[1].sharey(axes[0])  # before and after on one scale
    run_colours = colours(optimizers or [None] * len(curves))
    change_range = _limits(list(curves.values()))
    outside = cut = 0
    for (label, curve), colour in zip(curves.items(), run_colours):
        for ax, (name, _) in zip(axes, PANELS):
            values = getattr(curve, name)
            if curve.raw is not None:
                raw = curve.raw[name]
                shown = (raw >= change_range[0]) & (raw <= change_range[1]) if name == "change" else np.isfinite(raw)
                outside += int(np.sum(np.isfinite(raw) & ~shown))
                ax.plot(curve.epoch[shown], raw[shown], ".", color=colour, alpha=0.18, markersize=3, zorder=1)
            if curve.std is not None and name in curve.std:
                ax.fill_between(curve.epoch, values - curve.std[name], values + curve.std[name], color=colour,
                                alpha=0.18, linewidth=0, zorder=1)
            ax.plot(curve.epoch, values, "-" if curve.raw is not None else "-o", color=colour, markersize=4,
                    label=label, zorder=2)
            if name == "change":
                cut += int(np.sum((values < change_range[0]) | (values > change_range[1])))
    for ax, (_, title) in zip(axes, PANELS):
        ax.set(xlabel="epoch", title=title)
        ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
    axes[0].set_ylabel("cosine similarity")
    axes[2].set_ylabel("relative change")
    axes[2].set_ylim(*change_range)
    notes = [f"{n} {what}" for n, what in ((cut, "curve points"), (outside, "raw points")) if n]
    if notes:
        axes[2].text(0.98, 0.03, "off the axis (near cos_a = 0):\n" + ", ".join(notes), transform=axes[2].transAxes,
                     ha="right", va="bottom", fontsize="x-small", color="0.3",
                     bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 2})
    axes[0].legend(fontsize="small")
    return fig


@dataclass
class RunCurve:
    """A curve with what labels and colours it: ``name`` (from the run's folder), ``optimizer`` (the
    run's), ``step_optimizer`` (whose step a ``cosine`` file measured, None for a step log)."""

    name: str
    optimizer: Optional[str]
    step_optimizer: Optional[str]
    curve: CosineCurve


def curves_of(path: str | os.PathLike, name: str, window_epochs: float = 1.0) -> list[RunCurve]:
    """The curves one input holds: a ``history.h5`` its step log's (named ``name``), a ``cosine``
    file one per run folder of its checkpoints, in the order written (named "<folder> post hoc")."""
    kind = stored_kind(path)
    if kind == "history":
        return [RunCurve(name, history_optimizer(path), None, curve_of_log(read_log(path, "cosine"), window_epochs))]
    if kind != "cosine":
        raise UserError(f"{path}: not a cosine result file or a run's history.h5" +
                        (f" (it holds {kind} results)." if kind else "."))
    runs: dict[str, list[CosineRecord]] = {}
    for record in read_records(path).values():
        runs.setdefault(str(Path(record.checkpoint).parent), []).append(record)
    return [RunCurve(f"{Path(run).name or run} post hoc", records[0].optimizer, records[0].settings["optimizer"],
                     curve_of_records(records)) for run, records in runs.items()]
