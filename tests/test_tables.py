"""The table writer: Markdown and LaTeX (booktabs) against hand-written expected text, LaTeX's
special characters escaped, files written side by side."""

import pytest

from alignsam_diag.errors import UserError
from alignsam_diag.plots.tables import Cell, Table, escape_latex, to_latex, to_markdown, write_tables

TABLE = Table(header=["Method", Cell("|B^a|", "$|B^a|$"), "Accuracy (%)"],
              rows=[["SAM", "–", "70.31 ± 0.23"], ["Align_SAM #2", "128", "71.21 ± 0.06"]],
              align="lrr")

MARKDOWN = """\
| Method | \\|B^a\\| | Accuracy (%) |
|:---|---:|---:|
| SAM | – | 70.31 ± 0.23 |
| Align_SAM #2 | 128 | 71.21 ± 0.06 |
"""

LATEX = r"""\begin{tabular}{lrr}
\toprule
Method & $|B^a|$ & Accuracy (\%) \\
\midrule
SAM & -- & 70.31 $\pm$ 0.23 \\
Align\_SAM \#2 & 128 & 71.21 $\pm$ 0.06 \\
\bottomrule
\end{tabular}
"""


def test_markdown_and_latex_of_a_table():
    assert to_markdown(TABLE) == MARKDOWN
    assert to_latex(TABLE) == LATEX


def test_a_caption_makes_a_float_with_a_label():
    table = Table(["a", "b"], [["1", "2"]], caption=Cell("λ at |B^a| = 8", r"$\lambda$ at $|B^a| = 8$"),
                  label="tab:x")
    assert to_markdown(table) == "**λ at \\|B^a\\| = 8**\n\n| a | b |\n|:---|:---|\n| 1 | 2 |\n"
    assert to_latex(table) == (r"""\begin{table}[t]
\centering
\caption{$\lambda$ at $|B^a| = 8$}
\label{tab:x}
\begin{tabular}{ll}
\toprule
a & b \\
\midrule
1 & 2 \\
\bottomrule
\end{tabular}
\end{table}
""")


def test_every_latex_special_character_is_escaped():
    assert escape_latex(r"a\b&c%d$e#f_g{h}i~j^k<l>m") == (
        r"a\textbackslash{}b\&c\%d\$e\#f\_g\{h\}i\textasciitilde{}j\textasciicircum{}k\textless{}l\textgreater{}m")
    assert escape_latex("ρ × 2 − 1") == r"$\rho$ $\times$ 2 $-$ 1"


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        Table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="one of l, c, r per column"):
        Table(["a", "b"], [], align="lx")


def test_write_tables_writes_both_files(tmp_path):
    written = write_tables(TABLE, tmp_path / "out" / "table9")
    assert written == [tmp_path / "out" / "table9.md", tmp_path / "out" / "table9.tex"]
    assert [p.read_text() for p in written] == [MARKDOWN, LATEX]
    (tmp_path / "taken.md").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        write_tables(TABLE, tmp_path / "taken")
