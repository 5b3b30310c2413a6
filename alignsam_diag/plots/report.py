"""``REPORT.md``: every figure and table of a ``figures all`` run, one line each on what it is
and where it came from.

Figures are shown inline (their PNG) with a link to the PDF; tables are included as Markdown
with a link to the LaTeX (booktabs) file. Links are relative to the report's folder, so the
folder can be moved or committed as a whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..files import atomic_write

REPORT_NAME = "REPORT.md"


@dataclass
class Artifact:
    """One figure or table: ``title`` (e.g. "Figure 1 — gradient alignment"), ``what`` (one
    line on what it shows), ``sources`` (the result files it was drawn from) and ``files``
    (what was written: .png/.pdf for a figure, .md/.tex for a table)."""

    title: str
    what: str
    sources: Sequence[Path]
    files: list[Path] = field(default_factory=list)

    def by_suffix(self, suffix: str) -> Path | None:
        return next((f for f in self.files if f.suffix == suffix), None)


def _link(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def report_text(artifacts: Sequence[Artifact], folder: Path, command: str,
                skipped: Sequence[tuple[Path, str]] = ()) -> str:
    """The Markdown of the report for ``artifacts`` written into ``folder`` by ``command``."""
    lines = ["# Results", "", f"Drawn by `{command}`. Every figure is also a PDF; every table also LaTeX "
             "(booktabs).", ""]
    for a in artifacts:
        sources = ", ".join(f"`{_link(s, folder)}`" for s in a.sources)
        lines += [f"## {a.title}", "", f"{a.what} From {sources}.", ""]
        png, pdf, md, tex = (a.by_suffix(s) for s in (".png", ".pdf", ".md", ".tex"))
        if png is not None:
            lines += [f"![{a.title}]({_link(png, folder)})", ""]
        if md is not None:
            lines += [md.read_text(encoding="utf-8").rstrip(), ""]
        other = [f"[{p.suffix[1:].upper()}]({_link(p, folder)})" for p in (pdf, tex) if p is not None]
        if other:
            lines += [" · ".join(other), ""]
    if skipped:
        lines += ["## Not drawn", ""] + [f"- `{p}`: {why}" for p, why in skipped] + [""]
    return "\n".join(lines)


def write_report(artifacts: Sequence[Artifact], folder: str | os.PathLike, command: str,
                 skipped: Sequence[tuple[Path, str]] = ()) -> Path:
    """Write ``folder/REPORT.md`` atomically; return its path."""
    folder = Path(folder)
    path = folder / REPORT_NAME
    with atomic_write(path) as tmp:
        tmp.write_text(report_text(artifacts, folder, command, skipped), encoding="utf-8")
    return path
