"""``alignsam-diag figures ...``: figures and tables from stored HDF5 results, one
subcommand per kind of result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from alignsam_diag.plots.history import plot_histories
from alignsam_diag.plots.save import check_figure_path, save_figure
from alignsam_diag.store.history import read_history

from .common import handle_errors
from .figures_landscape import landscape_figure
from .figures_spectrum import density


def history(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (holding history.h5) or history.h5 files.")],
    out: Annotated[Path, typer.Option("--out", help="Output file; its extension, .png or .pdf, picks the "
                                                    "format.")] = Path("figures/history.png"),
) -> None:
    """Training curves (loss, accuracy per epoch) of one or more runs, overlaid."""
    check_figure_path(out)
    histories = {}
    for run in runs:
        path = run / "history.h5" if run.is_dir() else run
        histories[run.name if run.is_dir() else run.parent.name] = read_history(path)
    typer.echo(save_figure(plot_histories(histories), out))


SUBCOMMANDS: dict[str, Callable[..., Any]] = {
    "history": history,
    "landscape": landscape_figure,
    "density": density,
}

app = typer.Typer(no_args_is_help=True, help="Figures and tables from stored HDF5 results.")
for _name, _command in SUBCOMMANDS.items():
    app.command(_name)(handle_errors(_command))
