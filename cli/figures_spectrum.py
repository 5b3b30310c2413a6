"""``alignsam-diag figures density FILE.h5``: the Hessian spectral density stored by ``eigs --density``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsam_diag.errors import UserError
from alignsam_diag.plots.save import check_figure_path, save_figure
from alignsam_diag.plots.spectrum import plot_densities
from alignsam_diag.store.spectrum import read_records


def density(
    file: Annotated[Path, typer.Argument(help="Eigs result file written by 'eigs --density --out FILE.h5'.")],
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="Only these checkpoints "
                                                            "(as given to eigs); repeatable. Default: all.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output file; its extension, .png or .pdf, picks the "
                                                    "format.")] = Path("figures/density.png"),
) -> None:
    """Spectral density (log scale) of each checkpoint, with its top-k eigenvalues as dotted lines."""
    check_figure_path(out)
    records = read_records(file)
    chosen = checkpoint or [name for name, r in records.items() if r.density is not None]
    missing = [name for name in chosen if name not in records or records[name].density is None]
    if missing or not chosen:
        raise UserError(f"{file}: no spectral density for {', '.join(missing) or 'any checkpoint'}; "
                        "run eigs with --density --out FILE.h5 first.")
    densities = {name: records[name].density for name in chosen}
    tops = {name: records[name].spectrum.eigenvalues for name in chosen if records[name].spectrum is not None}
    typer.echo(save_figure(plot_densities(densities, tops), out))
