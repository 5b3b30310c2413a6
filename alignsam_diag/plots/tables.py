"""Tables as a paper uses them: rows of text cells written as Markdown and as LaTeX (booktabs).

A cell is a string, written as it is in Markdown (``|`` escaped) and with LaTeX's special
characters escaped in LaTeX (and the few non-ASCII symbols of this tool's tables, ``±``, ``λ``,
``ρ``, ``×``, ``−``, ``–``, made math or dashes), or a :class:`Cell` that says what each format
shows (``Cell("|B^a|", "$|B^a|$")``). The LaTeX form is a ``tabular`` with ``\\toprule``,
``\\midrule`` and ``\\bottomrule`` (package ``booktabs``), inside a ``table`` float with
``\\caption`` and ``\\label`` when the table has a caption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from ..files import atomic_write, check_writable


@dataclass(frozen=True)
class Cell:
    """A cell shown as ``text`` in Markdown and as ``latex`` (written as is, not escaped) in LaTeX."""

    text: str
    latex: str


CellLike = Union[str, Cell]

# LaTeX's special characters and the symbols of this tool's tables, in text mode
LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "λ": r"$\lambda$", "ρ": r"$\rho$",
    "×": r"$\times$", "−": r"$-$", "–": "--", "<": r"\textless{}", ">": r"\textgreater{}",
}
ALIGNMENTS = {"l": ":---", "c": ":---:", "r": "---:"}


@dataclass
class Table:
    """``header`` (one cell per column), ``rows`` (each as many cells), ``align`` one of l, c, r
    per column (default: all l), an optional ``caption`` (a cell) and LaTeX ``label``."""

    header: Sequence[CellLike]
    rows: Sequence[Sequence[CellLike]]
    align: str = ""
    caption: Optional[CellLike] = None
    label: Optional[str] = None

    def __post_init__(self) -> None:
        self.align = self.align or "l" * len(self.header)
        if len(self.align) != len(self.header) or set(self.align) - set(ALIGNMENTS):
            raise ValueError(f"align {self.align!r}: one of l, c, r per column ({len(self.header)})")
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"a row has {len(row)} cells for {len(self.header)} columns: {row!r}")


def escape_latex(text: str) -> str:
    """``text`` with every LaTeX special character (and ±, λ, ρ, ×, −, –) written for text mode."""
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def _markdown_cell(cell: CellLike) -> str:
    text = cell.text if isinstance(cell, Cell) else cell
    return text.replace("|", r"\|").replace("\n", " ")


def _latex_cell(cell: CellLike) -> str:
    return cell.latex if isinstance(cell, Cell) else escape_latex(cell)


def to_markdown(table: Table) -> str:
    """The table as GitHub-flavoured Markdown, its caption (bold) and a blank line first when it
    has one; ends with a newline."""
    lines = [f"**{_markdown_cell(table.caption)}**", ""] if table.caption is not None else []
    lines.append("| " + " | ".join(_markdown_cell(c) for c in table.header) + " |")
    lines.append("|" + "|".join(ALIGNMENTS[a] for a in table.align) + "|")
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    """The table as a booktabs ``tabular``, in a ``table`` float with caption and label when it
    has a caption; ends with a newline."""
    body = [rf"\begin{{tabular}}{{{table.align}}}", r"\toprule",
            " & ".join(_latex_cell(c) for c in table.header) + r" \\", r"\midrule"]
    body += [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in table.rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    if table.caption is None:
        return "\n".join(body) + "\n"
    label = [rf"\label{{{table.label}}}"] if table.label else []
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_cell(table.caption)}}}", *label,
                      *body, r"\end{table}"]) + "\n"


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows of text cells (the header first) as columns padded to their widest cell, two spaces
    apart, trailing spaces dropped; no trailing newline."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def to_text(table: Table) -> str:
    """The table as aligned plain-text columns for a terminal (no caption); no trailing newline."""
    return aligned([[_markdown_cell(c) for c in row] for row in [table.header, *table.rows]])


def write_tables(table: Table, stem: str | os.PathLike) -> list[Path]:
    """Write ``stem``.md and ``stem``.tex (each atomically); return their paths."""
    stem = Path(stem)
    written = []
    for suffix, text in ((".md", to_markdown(table)), (".tex", to_latex(table))):
        path = stem.with_name(stem.name + suffix)
        check_writable(path)
        with atomic_write(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    return written
