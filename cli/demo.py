"""``alignsam-diag demo``: the main job on the embedded default data set (digits), end to end."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Device, Quiet, progress_display, resolve_device

Opt = typer.Option


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy, λ1 and corrupted top-1 per optimizer, as aligned text."""
    from alignsam_diag.plots.style import DISPLAY_NAMES
    from alignsam_diag.plots.tables import Table, to_text

    table = Table(["optimizer", "test acc. %", "λ1", "corrupted top-1 %"],
                  [[DISPLAY_NAMES[r["optimizer"]], _cell(r["test_acc"] and 100 * r["test_acc"], ".2f"),
                    _cell(r["lambda_1"], ".4g"), _cell(r.get("corrupted_top1") and 100 * r["corrupted_top1"], ".2f")]
                   for r in rows])
    return to_text(table)


def demo(
    out: Annotated[Path, Opt("--out", help="Folder for everything the demo makes; rerun to continue (finished "
                                           "stages are skipped).")] = Path("demo-output"),
    quick: Annotated[bool, Opt("--quick", help="Every stage cut to seconds (about a minute in all).")] = False,
    dataset: Annotated[str, Opt("--dataset", help="digits (embedded, about 5 minutes on 2 CPU cores) | "
                                                  "fashion-mnist (10,000 training samples, under an hour).")
                       ] = "digits",
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Train SGD, SAM and Align-SAM with gradient-cosine and λ_max tracking, then eigs (Table 10),
    landscape (Figures 3–4), post-hoc cosine (Figure 1), the corrupt robustness suite (Table 6),
    sharpness and a λ sweep (Figure 2); draw everything with `figures all` into OUT/figures and
    print a summary per optimizer."""
    from alignsam_diag.demo import STAGES, DemoSettings, run_demo

    from .figures_all import figures_all

    settings = DemoSettings.for_dataset(dataset, quick)
    start = time.perf_counter()
    with progress_display(quiet) as progress:
        result = run_demo(out, settings, resolve_device(device), progress)
        with contextlib.redirect_stdout(io.StringIO()):  # the file list is in REPORT.md
            figures_start = time.perf_counter()
            figures_all([out], out=out / "figures")
    seconds = {**result.seconds, "figures": time.perf_counter() - figures_start}
    typer.echo(summary_table(result.summary))
    done = ", ".join(f"{stage.name} {seconds[stage.name]:.0f} s" for stage in STAGES if stage.name in seconds)
    skipped = f"; skipped (finished before): {', '.join(result.skipped)}" if result.skipped else ""
    typer.echo(f"stages: {done}, figures {seconds['figures']:.0f} s{skipped}; total "
               f"{time.perf_counter() - start:.0f} s")
    typer.echo(f"report: {out / 'figures' / 'REPORT.md'}")
