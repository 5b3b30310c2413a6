"""``alignsam-diag figures cosine`` (the paper's Figure 1) and ``figures sharpness`` (λ_max along
training with the edge of stability 2/η), from cosine files and the step logs in runs' history.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignsam_diag.errors import OptionError
from alignsam_diag.plots.save import figure_path, save_figure
from alignsam_diag.plots.style import DISPLAY_NAMES, default_labels, parse_labels

from .figures_common import FigureFormat, FigureOut, Labels


def cosine_figure(
    inputs: Annotated[list[Path], typer.Argument(help="Run folders or history.h5 files (trained with "
                                                      "--track-cosine-every), or cosine files (cosine --out).")],
    window: Annotated[float, typer.Option("--window", help="Epochs of logged steps each point of a step log's "
                                                           "moving average spans.")] = 1.0,
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Figure 1: cosine_b, cosine_a and change over epochs, one curve per run (a cosine file's
    means over pairs with ±1 std bands; a step log's moving average over its faint raw points).
    Into a folder OUT it writes OUT/cosine-<run or file>-....png."""
    from alignsam_diag.plots.cosine import curves_of, plot_cosines

    from .figures import _history_file, _run_name

    if not window > 0:
        raise OptionError("window", window, "must be a positive number of epochs.")
    stems = [_run_name(p) if p.is_dir() or p.name == "history.h5" else p.stem for p in inputs]
    path = figure_path(out, "-".join(["cosine", *stems]), fmt)
    runs = [run for p, stem in zip(inputs, stems) for run in curves_of(_history_file(p), stem, window)]
    names = [run.name for run in runs]
    optimizers = [run.optimizer for run in runs]
    shown = [run.optimizer if run.step_optimizer in (None, run.optimizer) else  # measured with another step
             f"{DISPLAY_NAMES.get(run.optimizer or '', run.optimizer or run.name)} "
             f"({DISPLAY_NAMES.get(run.step_optimizer, run.step_optimizer)} step)" for run in runs]
    titles = parse_labels(labels, names) or default_labels(shown, names)
    typer.echo(save_figure(plot_cosines({t: run.curve for t, run in zip(titles, runs)}, optimizers), path))


def sharpness_figure(
    runs: Annotated[list[Path], typer.Argument(help="Run folders or history.h5 files (trained with "
                                                    "--track-sharpness-every).")],
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """λ_max of the Hessian against the step, with 2/η of each run's learning rate η (dashed), the
    runs overlaid. Into a folder OUT it writes OUT/sharpness-<run>-<run>....png."""
    from alignsam_diag.plots.sharpness_trajectory import plot_sharpness
    from alignsam_diag.store.history import history_optimizer
    from alignsam_diag.store.tracking import read_log

    from .figures import _history_file, _run_name

    names = [_run_name(run) for run in runs]
    path = figure_path(out, "-".join(["sharpness", *names]), fmt)
    given = parse_labels(labels, names)
    logs = [read_log(_history_file(run), "sharpness") for run in runs]
    optimizers = [history_optimizer(_history_file(run)) for run in runs]
    titles = given or default_labels(optimizers, names)
    typer.echo(save_figure(plot_sharpness(dict(zip(titles, logs)), optimizers), path))
