"""``alignsam-diag figures density FILE.h5...``: the Hessian spectral densities stored by ``eigs --density``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from alignsam_diag.errors import UserError
from alignsam_diag.plots.save import figure_path, save_figure
from alignsam_diag.plots.style import default_labels, parse_labels

if TYPE_CHECKING:
    from alignsam_diag.store.spectrum import EigsRecord

from .figures_common import FigureFormat, FigureOut, Labels


def _chosen(files: list[Path], checkpoints: Optional[list[str]]) -> list[EigsRecord]:
    """The records to plot, in the files' order and each file's (the order given to eigs), or
    in the order of ``checkpoints`` when given; one without a density is a :class:`UserError`."""
    from alignsam_diag.store.spectrum import read_records

    records = [r for file in files for r in read_records(file).values()]
    chosen = ([r for c in checkpoints for r in records if r.checkpoint == c] if checkpoints
              else [r for r in records if r.density is not None])
    found = {r.checkpoint for r in chosen if r.density is not None}
    missing = [c for c in checkpoints or [] if c not in found]
    if missing or not chosen:
        raise UserError(f"{', '.join(map(str, files))}: no spectral density for "
                        f"{', '.join(missing) or 'any checkpoint'}; run eigs with --density --out FILE.h5 first.")
    return chosen


def density(
    files: Annotated[list[Path], typer.Argument(help="Eigs result files written by 'eigs --density --out FILE.h5'.")],
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="Only these checkpoints "
                                                            "(as given to eigs), in this order; repeatable. "
                                                            "Default: all, in the order given to eigs.")] = None,
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Spectral density (log scale) of each checkpoint, with its top-k eigenvalues as dotted
    lines. Into a folder OUT it writes OUT/<file>[-<file>...]-density.png."""
    from alignsam_diag.plots.spectrum import plot_densities
    from alignsam_diag.store.landscape import group_names

    path = figure_path(out, "-".join([*(f.stem for f in files), "density"]), fmt)
    records = _chosen(files, checkpoint)
    names = group_names([r.checkpoint for r in records])
    given = parse_labels(labels, names)
    optimizers = [r.optimizer for r in records]
    titles = given or default_labels(optimizers, names)
    densities = {t: r.density for t, r in zip(titles, records)}
    tops = {t: r.spectrum.eigenvalues for t, r in zip(titles, records) if r.spectrum is not None}
    typer.echo(save_figure(plot_densities(densities, tops, optimizers), path))
