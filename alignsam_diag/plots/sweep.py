"""Figures and tables from a sweep summary (:mod:`alignsam_diag.store.sweep`): the paper's
Figure 2 (accuracy against the trade-off λ) and Table 9 (auxiliary batch size |B^a| against
accuracy and training time), with a small figure of the latter.

Runs that differ only in seed are one point: the mean, with ± one standard deviation over the
seeds as error bars (none for a single seed). The runs are split into curves by every swept
option but the x option and the seeds; a curve's colour is its optimizer's
(:mod:`alignsam_diag.plots.style`), and curves of one optimizer differ in marker and line
style. Runs that have no x value — SAM in a λ sweep, SGD and SAM in a |B^a| sweep — are drawn as
dashed horizontal lines with a ± std band: the baselines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import OptionError, UserError
from ..store.sweep import METRICS, SEED_KEYS, SeedGroup, SweepSummary, seed_groups
from .style import DISPLAY_NAMES, colours
from .tables import Cell, Table, escape_latex

# option -> (plain text, LaTeX math) of its symbol, for legends, axes and table headers
SYMBOLS = {"hyper.lam": ("λ", r"\lambda"), "hyper.rho": ("ρ", r"\rho"), "aux_batch_size": ("|B^a|", "|B^a|"),
           "batch_size": ("|B^t|", "|B^t|")}
AXIS_NAMES = {"hyper.lam": "trade-off", "hyper.rho": "radius", "aux_batch_size": "auxiliary batch size",
              "batch_size": "train batch size"}
METRIC_NAMES = {"test_acc": "test accuracy (%)", "train_acc": "train accuracy (%)",
                "test_loss": "test loss (cross-entropy)", "train_loss": "train loss (cross-entropy)",
                "epoch_seconds": "training time per epoch (s)", "total_seconds": "training time in total (s)"}
PERCENT = ("test_acc", "train_acc")
MARKERS = ("o", "s", "^", "D", "v", "P")
LINE_STYLES = ("-", "--", "-.", ":")
BASELINE_STYLES = ("--", ":", "-.", (0, (8, 2, 1, 2, 1, 2)))  # told apart from each other and from the curves


@dataclass
class Curve:
    """One curve: ``x`` (P,) the x option's values, ascending (empty for a baseline), and per
    point the ``mean`` and ``std`` (NaN: one seed) of the metric over ``seeds`` runs, in the
    metric's unit (accuracy in %, loss in nats, time in s). ``values``: the other swept options."""

    optimizer: str
    values: dict[str, Any]
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seeds: np.ndarray

    @property
    def baseline(self) -> bool:
        return len(self.x) == 0


def shown(value: Any) -> str:
    """A value for a reader: ``0.5``, ``2``, ``128``, ``align-sam``; ``–`` for none."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def symbol(option: str, math_text: bool = True) -> str:
    """How a legend or axis names ``option``: its symbol (matplotlib math text ``$\\lambda$`` when
    ``math_text``, else plain ``λ``), or the option's name."""
    if option not in SYMBOLS:
        return option
    plain, tex = SYMBOLS[option]
    return f"${tex}$" if math_text else plain


def _check_metric(metric: str) -> float:
    """The factor to the metric's unit (100 for accuracies); an unknown metric is an OptionError."""
    if metric not in METRICS:
        raise OptionError("metric", metric, f"choose one of {', '.join(METRICS)}.")
    return 100.0 if metric in PERCENT else 1.0


def _stats(group: SeedGroup, metric: str, scale: float) -> tuple[float, float]:
    return scale * group.mean(metric), scale * group.std(metric)


def sweep_curves(summary: SweepSummary, x: str, metric: str = "test_acc") -> list[Curve]:
    """The finished runs of ``summary`` as curves of ``metric`` against the resolved option ``x``
    (e.g. ``hyper.lam``), in order of their first run; a :class:`UserError` if no run has ``x``."""
    scale = _check_metric(metric)
    others = [k for k in summary.keys if k != x and k not in SEED_KEYS and k != "optimizer"]
    found: dict[str, list[SeedGroup]] = {}
    for group in seed_groups(summary.finished()):
        record = group.first
        found.setdefault(json.dumps([record.optimizer, *(record.values.get(k) for k in others)], default=str),
                         []).append(group)
    curves = []
    for groups in found.values():
        first = groups[0].first
        values = {k: first.values.get(k) for k in others}
        with_x = [g for g in groups if g.first.option(x) is not None]
        if not with_x:  # a baseline: every group of the curve is the same setting, so there is one
            mean, std = _stats(groups[0], metric, scale)
            curves.append(Curve(first.optimizer, values, np.array([]), np.array([mean]), np.array([std]),
                                np.array([groups[0].seeds])))
            continue
        points = sorted(((g.first.option(x), *_stats(g, metric, scale), g.seeds) for g in with_x), key=lambda p: p[0])
        xs, mean, std, seeds = (np.array(column) for column in zip(*points))
        curves.append(Curve(first.optimizer, values, xs.astype(float), mean, std, seeds))
    if all(c.baseline for c in curves):
        raise UserError(f"no finished run of the sweep has {x}; choose an option the sweep varies "
                        f"({', '.join(summary.keys)}).")
    return curves


def curve_labels(curves: Sequence[Curve]) -> list[str]:
    """Legend labels: the optimizer's name, with the other swept options that differ between the
    curves (``Align-SAM (ρ = 0.1)``)."""
    varying = [k for k in (curves[0].values if curves else {})
               if len({json.dumps(c.values.get(k), default=str) for c in curves}) > 1]
    labels = []
    for c in curves:
        extra = ", ".join(f"{symbol(k)} = {shown(c.values.get(k))}" for k in varying)
        name = DISPLAY_NAMES.get(c.optimizer, c.optimizer)
        labels.append(f"{name} ({extra})" if extra else name)
    return labels


def _seed_note(curves: Sequence[Curve]) -> str:
    counts = sorted({int(n) for c in curves for n in c.seeds})
    if counts == [1]:
        return "one seed per point"
    spread = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± std over {spread} seeds"


def _draw(ax: Axes, curves: Sequence[Curve], labels: Sequence[str]) -> None:
    """Curves with markers and error bars; baselines as dashed lines with a ± std band."""
    seen: dict[str, int] = {}
    for curve, label, colour in zip(curves, labels, colours([c.optimizer for c in curves])):
        k = seen[curve.optimizer] = seen.get(curve.optimizer, -1) + 1
        if curve.baseline:
            mean, std = curve.mean[0], curve.std[0]
            ax.axhline(mean, color=colour, linestyle=BASELINE_STYLES[k % len(BASELINE_STYLES)], linewidth=1.6,
                       label=label)
            if math.isfinite(std):
                ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
            continue
        ax.plot(curve.x, curve.mean, marker=MARKERS[k % len(MARKERS)], linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                color=colour, label=label)
        spread = np.isfinite(curve.std)
        if spread.any():
            ax.errorbar(curve.x[spread], curve.mean[spread], yerr=curve.std[spread], fmt="none", ecolor=colour,
                        capsize=3, elinewidth=1)


def _x_axis(ax: Axes, curves: Sequence[Curve], option: str) -> None:
    """Ticks at the swept values; a base-2 log scale when they are positive and span a factor ≥ 8."""
    values = np.unique(np.concatenate([c.x for c in curves if not c.baseline]))
    if values.min() > 0 and values.max() / values.min() >= 8:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    if len(values) <= 12:
        ax.set_xticks(values, labels=[shown(float(v)) for v in values])
    ax.set_xlabel(" ".join(filter(None, [AXIS_NAMES.get(option), symbol(option)])))


def _labels(curves: Sequence[Curve], given: Optional[Sequence[str]]) -> list[str]:
    if given is not None and len(given) != len(curves):
        raise UserError(f"--labels gives {len(given)} label(s) for {len(curves)} curve(s) "
                        f"({', '.join(curve_labels(curves))}); give one per curve, in the legend's order.")
    return list(given) if given is not None else curve_labels(curves)


def plot_lambda(summary: SweepSummary, x: str = "hyper.lam", metric: str = "test_acc",
                labels: Optional[Sequence[str]] = None) -> Figure:
    """Figure 2: ``metric`` (default test accuracy, %) against the option ``x`` (default λ), one
    curve per optimizer (and per other swept option), mean ± std over seeds; runs without ``x``
    as baselines. labels: one per curve (:func:`sweep_curves` order), replacing :func:`curve_labels`."""
    curves = sweep_curves(summary, x, metric)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, curves, _labels(curves, labels))
    _x_axis(ax, curves, x)
    ax.set_ylabel(METRIC_NAMES[metric])
    ax.set_title(f"{METRIC_NAMES[metric].split(' (')[0]} against {symbol(x)} ({_seed_note(curves)})", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_aux_batch(summary: SweepSummary, metric: str = "test_acc",
                   labels: Optional[Sequence[str]] = None) -> Figure:
    """Table 9 as a figure: ``metric`` (left) and training time per epoch (right) against |B^a|,
    mean ± std over seeds; runs without an auxiliary batch as baselines."""
    accuracy, seconds = sweep_curves(summary, "aux_batch_size", metric), sweep_curves(summary, "aux_batch_size",
                                                                                       "epoch_seconds")
    names = _labels(accuracy, labels)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, curves, name in ((left, accuracy, metric), (right, seconds, "epoch_seconds")):
        _draw(ax, curves, names)
        _x_axis(ax, curves, "aux_batch_size")
        ax.set_ylabel(METRIC_NAMES[name])
        ax.grid(alpha=0.3)
    left.set_title(f"{METRIC_NAMES[metric].split(' (')[0]} ({_seed_note(accuracy)})", fontsize="medium")
    right.set_title("training time per epoch (evaluation excluded)", fontsize="medium")
    right.set_ylim(bottom=0)
    left.legend(fontsize="small")
    return fig


def duration(seconds: float) -> str:
    """``0.0187 s``, ``11 s``, ``36.6 min``, ``2.50 h``; ``–`` for NaN."""
    if not math.isfinite(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def _mean_std(group: SeedGroup, metric: str, scale: float) -> str:
    digits = 2 if metric in PERCENT else 4
    mean, std = _stats(group, metric, scale)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def aux_batch_table(summary: SweepSummary, metric: str = "test_acc", source: str = "") -> Table:
    """Table 9: one row per setting (runs differing only in seed), by optimizer (in order of
    first appearance), then the other swept options, epochs and |B^a| (– without an auxiliary
    batch): ``metric`` as mean ± std over the seeds, the number of seeds, and the mean training
    time per epoch and in total. source: where the summary came from, for the caption."""
    scale = _check_metric(metric)
    groups = seed_groups(summary.finished())
    if not groups:
        raise UserError("no finished run in the sweep; run alignsam-diag sweep first.")
    others = [k for k in summary.keys if k not in (*SEED_KEYS, "optimizer", "epochs", "aux_batch_size")]
    order = list(dict.fromkeys(g.first.optimizer for g in groups))

    def sort_key(g: SeedGroup) -> tuple:
        r = g.first
        return (order.index(r.optimizer), *(json.dumps(r.values.get(k), default=str) for k in others), r.epochs,
                -1 if r.option("aux_batch_size") is None else r.option("aux_batch_size"))

    header = ["Method", "Epochs", Cell("|B^a|", "$|B^a|$"),
              *(Cell(symbol(k, False), f"${SYMBOLS[k][1]}$") if k in SYMBOLS else k for k in others),
              METRIC_NAMES[metric][0].upper() + METRIC_NAMES[metric][1:], "Seeds", "Time / epoch", "Total"]
    rows = [[DISPLAY_NAMES.get(g.first.optimizer, g.first.optimizer), str(g.first.epochs),
             shown(g.first.option("aux_batch_size")), *(shown(g.first.values.get(k)) for k in others),
             _mean_std(g, metric, scale), str(g.seeds), duration(g.mean("epoch_seconds")),
             duration(g.mean("total_seconds"))] for g in sorted(groups, key=sort_key)]
    unit = "%, " if metric in PERCENT else ""
    where = f", from {source}" if source else ""
    before = "Auxiliary batch size "
    after = (f" against {METRIC_NAMES[metric].split(' (')[0]} ({unit}mean ± std over seeds) and training time per "
             f"epoch and in total (evaluation excluded){where}.")
    caption = Cell(f"{before}|B^a|{after}", f"{escape_latex(before)}$|B^a|${escape_latex(after)}")
    return Table(header, rows, align="lrr" + "r" * len(others) + "rrrr", caption=caption, label="tab:aux-batch")
