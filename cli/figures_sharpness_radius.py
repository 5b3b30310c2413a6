"""``alignsam-diag figures sharpness-radius FILE.h5...``: sharpness against the radius ρ, from the
rows that ``sharpness --rho ρ1,ρ2,... --out FILE.h5`` stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignsam_diag.errors import OptionError, UserError
from alignsam_diag.plots.save import figure_path, save_figure
from alignsam_diag.plots.style import default_labels, parse_labels

from .figures_common import FigureFormat, FigureOut, Labels


def sharpness_radius(
    files: Annotated[list[Path], typer.Argument(help="Sharpness result files written by 'sharpness --out FILE.h5'.")],
    quantity: Annotated[str, typer.Option("--quantity", help="loss | error: the increase drawn.")] = "loss",
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Sharpness (loss or error increase) against the radius ρ: one panel per measure (worst-case /
    average-case, norm, standard / adaptive, m), one curve per checkpoint in the order given to
    sharpness, λ_max in the legend when stored (--with-eigs). Into a folder OUT it writes
    OUT/<file>[-<file>...]-sharpness-radius.png."""
    from alignsam_diag.plots.sharpness_radius import QUANTITIES, plot_sharpness_radius, radius_panels
    from alignsam_diag.store.landscape import group_names
    from alignsam_diag.store.sharpness import read_sharpness

    if quantity not in QUANTITIES:
        raise OptionError("quantity", quantity, f"choose {' or '.join(QUANTITIES)}.")
    path = figure_path(out, "-".join([*(f.stem for f in files), "sharpness-radius"]), fmt)
    results = [read_sharpness(file) for file in files]
    rows = [row for r in results for row in r.rows]
    if not rows:
        raise UserError(f"{', '.join(map(str, files))}: no sharpness results; run sharpness --out FILE.h5 first.")
    checkpoints = list(dict.fromkeys(row.checkpoint for row in rows))
    optimizers = [next(row.optimizer for row in rows if row.checkpoint == c) for c in checkpoints]
    names = group_names(checkpoints)
    titles = parse_labels(labels, names) or default_labels(optimizers, names)
    eigs = {e.checkpoint: e for r in results for e in r.eigs}
    titles = [f"{t} (λ_max {eigs[c].lambda_max:#.3g})" if c in eigs else t for t, c in zip(titles, checkpoints)]
    samples = sorted({row.estimate.samples for row in rows})
    split = results[0].settings.get("split", "train")
    title = (f"Sharpness vs radius on {' / '.join(map(str, samples))} {split} samples\nbars: ± one standard error "
             "(average-case: over the draws; worst-case: over the groups of m)")
    figure = plot_sharpness_radius(radius_panels(rows, dict(zip(checkpoints, titles)), quantity), titles,
                                   optimizers, QUANTITIES[quantity], title)
    typer.echo(save_figure(figure, path))
