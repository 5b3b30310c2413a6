"""Options shared by every ``figures`` subcommand: ``--labels``, ``--out``, ``--format``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Labels = Annotated[Optional[str], typer.Option(
    "--labels", show_default=False,
    help="Comma-separated labels (legend entries, panel titles), one per run in the inputs' order, e.g. "
         "SGD,SAM,Align-SAM. Default: the optimizer each run records (SGD, SAM, Align-SAM...; \"SAM (run)\" "
         "where two share one), the run's name where none is recorded. Colours always follow the recorded "
         "optimizer, whatever the order or labels.")]
FigureOut = Annotated[Path, typer.Option(
    "--out", help="A name ending in .png or .pdf is the figure file; anything else is a folder (made if missing) "
                  "that gets the figure under a descriptive name.")]
FigureFormat = Annotated[Optional[str], typer.Option(
    "--format", show_default=False,
    help="png | pdf: the format of a figure written into an --out folder (default png); for an --out file "
         "name its extension decides, and --format must agree.")]
