"""``alignsam-diag figures robustness FILE.h5``: the paper's Table 6 as Markdown and LaTeX from a
``robustness`` results file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsam_diag.errors import OptionError

from .figures_common import Labels

FORMATS = {"md": "markdown", "tex": "latex"}


def _targets(out: Path, stem: str, fmt: Optional[str]) -> list[Path]:
    """The table files ``--out`` means: itself when it ends in .md or .tex, else ``out/<stem>.md``
    and ``.tex`` (or only the ``--format`` one)."""
    if fmt is not None and fmt not in FORMATS:
        raise OptionError("fmt", fmt, "choose md or tex.")
    suffix = out.suffix[1:].lower()
    if suffix in FORMATS:
        if fmt is not None and fmt != suffix:
            raise OptionError("fmt", fmt, f"contradicts --out {out}; give one of the two.")
        return [out]
    return [out / f"{stem}.{f}" for f in ([fmt] if fmt else FORMATS)]


def robustness_table(
    file: Annotated[Path, typer.Argument(help="A results file written by `alignsam-diag robustness`.")],
    labels: Labels = None,
    fmt: Annotated[Optional[str], typer.Option("--format", show_default=False,
                                               help="md | tex: write only this one (default: both).")] = None,
    out: Annotated[Path, typer.Option("--out", help="A name ending in .md or .tex is the table file; anything else "
                                                    "is a folder (made if missing) that gets <file>-table6.md and "
                                                    ".tex.")] = Path("figures"),
) -> None:
    """Table 6 of the paper (top-1 and top-5 on every suite in FILE, mCE where defined), one row
    per checkpoint, as Markdown and as a LaTeX booktabs tabular."""
    from alignsam_diag.analysis.robustness import summaries
    from alignsam_diag.files import atomic_write, check_writable
    from alignsam_diag.plots.robustness_table import render_latex, render_markdown, table6
    from alignsam_diag.plots.style import parse_labels
    from alignsam_diag.store.landscape import group_names
    from alignsam_diag.store.robustness import read_records

    targets = _targets(out, f"{file.stem}-table6", fmt)
    for target in targets:
        check_writable(target)
    results = summaries(read_records(file))
    checkpoints = list(dict.fromkeys(s.checkpoint for s in results))
    table = table6(results, parse_labels(labels, group_names(checkpoints)))
    for target in targets:
        render = render_markdown if target.suffix == ".md" else render_latex
        with atomic_write(target) as tmp:
            tmp.write_text(render(table))
        typer.echo(target)
