"""``alignsam-diag figures lambda`` (Figure 2) and ``figures aux-batch`` (Table 9) from a sweep summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from alignsam_diag.plots.save import figure_path, save_figure
from alignsam_diag.plots.style import parse_labels

from .figures_common import FigureFormat, FigureOut

if TYPE_CHECKING:
    from alignsam_diag.plots.sweep import Curve

Opt = typer.Option

Sweep = Annotated[Path, typer.Argument(help="A sweep folder (holding sweep.h5) or its sweep.h5, written by "
                                            "`alignsam-diag sweep`.")]
CurveLabels = Annotated[Optional[str], Opt(
    "--labels", show_default=False,
    help="Comma-separated legend labels, one per curve in the legend's order. Default: the optimizer's name, "
         "with the other swept options that tell curves apart. Colours always follow the optimizer.")]
Metric = Annotated[str, Opt("--metric", help="test_acc | train_acc | test_loss | train_loss: what the y axis shows.")]


def _labels(text: Optional[str], curves: list[Curve]) -> Optional[list[str]]:
    from alignsam_diag.plots.sweep import curve_labels

    return parse_labels(text, curve_labels(curves)) if text is not None else None


def lambda_figure(
    sweep: Sweep,
    x: Annotated[str, Opt("--x", help="The swept option on the x axis (hyper.lam, hyper.rho, lr, ...).")
                 ] = "hyper.lam",
    metric: Metric = "test_acc",
    labels: CurveLabels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Figure 2: test accuracy against the trade-off λ, one curve per optimizer (and per other
    swept option), mean ± std over seeds as error bars; runs without λ (SAM, SGD) as dashed
    baselines with a ± std band. Into a folder OUT it writes OUT/<sweep>-lambda.png."""
    from alignsam_diag.plots.sweep import plot_lambda, sweep_curves
    from alignsam_diag.store.sweep import finished_summary, sweep_name

    summary = finished_summary(sweep, "Figure 2")
    path = figure_path(out, f"{sweep_name(sweep)}-{'lambda' if x == 'hyper.lam' else x}", fmt)
    given = _labels(labels, sweep_curves(summary, x, metric))
    typer.echo(save_figure(plot_lambda(summary, x, metric, given), path))


def aux_batch(
    sweep: Sweep,
    metric: Metric = "test_acc",
    labels: CurveLabels = None,
    fmt: FigureFormat = None,
    out: FigureOut = Path("figures"),
) -> None:
    """Table 9: auxiliary batch size |B^a| against accuracy (mean ± std over seeds) and training
    time per epoch and in total, as Markdown and LaTeX (booktabs) tables, with a figure of the
    same. Into a folder OUT it writes OUT/<sweep>-aux-batch.png (or .pdf), .md and .tex; for an
    OUT file name, the tables go beside it under the same name."""
    from alignsam_diag.plots.sweep import aux_batch_table, plot_aux_batch, sweep_curves
    from alignsam_diag.plots.tables import write_tables
    from alignsam_diag.store.sweep import finished_summary, summary_file, sweep_name

    summary = finished_summary(sweep, "Table 9")
    path = figure_path(out, f"{sweep_name(sweep)}-aux-batch", fmt)
    given = _labels(labels, sweep_curves(summary, "aux_batch_size", metric))
    table = aux_batch_table(summary, metric, source=str(summary_file(sweep)))
    for written in write_tables(table, path.with_suffix("")):
        typer.echo(written)
    typer.echo(save_figure(plot_aux_batch(summary, metric, given), path))
