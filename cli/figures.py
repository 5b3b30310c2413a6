"""``alignsam-diag figures ...``: figures and tables from stored HDF5 results, one
subcommand per kind of result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from alignsam_diag.plots.save import figure_path, save_figure
from alignsam_diag.plots.style import default_labels, parse_labels

from .common import handle_errors
from .figures_all import figures_all
from .figures_common import FigureFormat, FigureOut, Labels
from .figures_cosine import cosine_figure, sharpness_figure
from .figures_landscape import landscape_figure
from .figures_robustness import robustness_table
from .figures_sharpness_radius import sharpness_radius
from .figures_spectrum import density
from .figures_sweep import aux_batch, lambda_figure


def _history_file(run: Path) -> Path:
    return run / "history.h5" if run.is_dir() else run


def _run_name(run: Path) -> str:
    """The run's folder name (``runs/sam`` and ``runs/sam/history.h5`` are both ``sam``)."""
    return run.name if run.is_dir() else (run.parent.name or run.stem)


def history(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (holding history.h5) or history.h5 files.")],
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Training curves (loss, accuracy per epoch) of one or more runs, overlaid, in the order
    given. Into a folder OUT it writes OUT/history-<run>-<run>....png."""
    from alignsam_diag.plots.history import plot_histories
    from alignsam_diag.store.history import history_optimizer, read_history

    names = [_run_name(run) for run in runs]
    path = figure_path(out, "-".join(["history", *names]), fmt)
    given = parse_labels(labels, names)
    histories = [read_history(_history_file(run)) for run in runs]
    optimizers = [history_optimizer(_history_file(run)) for run in runs]
    titles = given or default_labels(optimizers, names)
    typer.echo(save_figure(plot_histories(dict(zip(titles, histories)), optimizers), path))


SUBCOMMANDS: dict[str, Callable[..., Any]] = {
    "all": figures_all,
    "history": history,
    "landscape": landscape_figure,
    "density": density,
    "cosine": cosine_figure,
    "sharpness": sharpness_figure,
    "robustness": robustness_table,
    "lambda": lambda_figure,
    "aux-batch": aux_batch,
    "sharpness-radius": sharpness_radius,
}

app = typer.Typer(no_args_is_help=True, help="Figures and tables from stored HDF5 results.")
for _name, _command in SUBCOMMANDS.items():
    app.command(_name)(handle_errors(_command))
