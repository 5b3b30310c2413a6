"""``alignsam-diag figures landscape``: loss-landscape figures from a ``landscape`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsam_diag.errors import UserError
from alignsam_diag.plots.save import check_figure_out, figure_path, save_figure
from alignsam_diag.plots.style import default_labels, parse_labels

from .figures_common import FigureFormat, FigureOut, Labels

Opt = typer.Option


def landscape_figure(
    file: Annotated[Path, typer.Argument(help="A surface file written by `alignsam-diag landscape`.")],
    kind: Annotated[Optional[str], Opt("--kind", help="contour | contourf | heatmap | surface (2-D) | curve (1-D); "
                                       "default: contour for 2-D, curve for 1-D.", show_default=False)] = None,
    metric: Annotated[str, Opt("--metric", help="loss | acc (blue = better for both: low loss, high accuracy).")
                      ] = "loss",
    log: Annotated[Optional[bool], Opt("--log/--linear", show_default=False,
                                       help="Colour scale (and z/y axis), with --levels evenly spaced on it. Default: "
                                            "--log for loss, so the levels resolve the basin (a basin at 0.4 in a "
                                            "plane rising to 10 gets a third of them below 1.4), --linear for "
                                            "acc.")] = None,
    zmin: Annotated[Optional[float], Opt("--zmin", help="Low end of the shared colour/z range.", show_default=False)] = None,
    zmax: Annotated[Optional[float], Opt("--zmax", help="High end of the shared colour/z range.", show_default=False)] = None,
    levels: Annotated[int, Opt("--levels", help="Contour levels.")] = 30,
    labels: Labels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """All checkpoints of FILE side by side, with one shared colour scale and z-range (as the
    paper's Figures 3–4). Into a folder OUT it writes OUT/<file>-<kind>[-acc][-log].png."""
    from alignsam_diag.plots.landscape import default_log, plot_landscapes
    from alignsam_diag.store.landscape import read_landscape

    check_figure_out(out)
    if levels < 2:
        raise UserError(f"--levels {levels}: needs at least 2.")
    stored = read_landscape(file)
    names = [g.name for g in stored.groups]
    given = parse_labels(labels, names)
    optimizers = [g.optimizer for g in stored.groups]
    titles = given or default_labels(optimizers, names)
    kind = kind or ("curve" if stored.groups[0].surface.grid.dim == 1 else "contour")
    log = default_log(metric) if log is None else log
    fig = plot_landscapes({t: g.surface for t, g in zip(titles, stored.groups)}, kind=kind, metric=metric, log=log,
                          zlim=(zmin, zmax), levels=levels, split=stored.split, optimizers=optimizers)
    suffix = "".join(["-acc" if metric == "acc" else "", "-log" if log else ""])
    typer.echo(save_figure(fig, figure_path(out, f"{file.stem}-{kind}{suffix}", fmt)))
