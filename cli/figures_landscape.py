"""``alignsam-diag figures landscape``: loss-landscape figures from a ``landscape`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsam_diag.errors import UserError
from alignsam_diag.files import check_writable
from alignsam_diag.plots.landscape import plot_landscapes
from alignsam_diag.plots.save import save_figure
from alignsam_diag.store.landscape import read_landscape

Opt = typer.Option


def landscape_figure(
    file: Annotated[Path, typer.Argument(help="A surface file written by `alignsam-diag landscape`.")],
    kind: Annotated[Optional[str], Opt("--kind", help="contour | contourf | heatmap | surface (2-D) | curve (1-D); "
                                       "default: contour for 2-D, curve for 1-D.", show_default=False)] = None,
    metric: Annotated[str, Opt("--metric", help="loss | acc")] = "loss",
    log: Annotated[bool, Opt("--log", help="Logarithmic colour scale (and z axis).")] = False,
    zmin: Annotated[Optional[float], Opt("--zmin", help="Low end of the shared colour/z range.", show_default=False)] = None,
    zmax: Annotated[Optional[float], Opt("--zmax", help="High end of the shared colour/z range.", show_default=False)] = None,
    levels: Annotated[int, Opt("--levels", help="Contour levels.")] = 30,
    labels: Annotated[Optional[str], Opt("--labels", help="Comma-separated panel titles in the file's order, "
                                         "e.g. SGD,SAM,Align-SAM (default: the checkpoint names).",
                                         show_default=False)] = None,
    fmt: Annotated[str, Opt("--format", help="png | pdf")] = "png",
    out: Annotated[Path, Opt("--out", help="Output folder.")] = Path("figures"),
) -> None:
    """All checkpoints of FILE side by side, with one shared colour scale and z-range (as the
    paper's Figures 3–4). Writes OUT/<file>-<kind>[-acc][-log].<format>."""
    if fmt not in ("png", "pdf"):
        raise UserError(f"--format {fmt}: choose png or pdf.")
    if levels < 2:
        raise UserError(f"--levels {levels}: needs at least 2.")
    check_writable(out, folder=True)
    stored = read_landscape(file)
    names = [g.name for g in stored.groups]
    titles = [t.strip() for t in labels.split(",")] if labels else names
    if len(titles) != len(names):
        raise UserError(f"--labels gives {len(titles)} title(s) but {file} holds {len(names)} surface(s): "
                        f"{', '.join(names)}.")
    kind = kind or ("curve" if stored.groups[0].surface.grid.dim == 1 else "contour")
    fig = plot_landscapes({t: g.surface for t, g in zip(titles, stored.groups)}, kind=kind, metric=metric, log=log,
                          zlim=(zmin, zmax), levels=levels, split=stored.split)
    suffix = "".join(["-acc" if metric == "acc" else "", "-log" if log else ""])
    typer.echo(save_figure(fig, out / f"{file.stem}-{kind}{suffix}.{fmt}"))
