"""The paper's Table 6 from robustness results: one row per checkpoint; top-1 then top-5
accuracy (percent) on each suite; mCE (and relative mCE) where defined. As plain text (the
``robustness`` command's output), Markdown and LaTeX (booktabs).

Columns follow the suites present, in the order ImageNet (clean), ImageNet-R, ImageNet-C,
CIFAR-10-C, CIFAR-100-C, generated corruptions; a suite with its own clean set (CIFAR-C with
torchvision's test split beside it, ``corrupt``) also gets a clean column before it. A cell a
checkpoint has no result for is ``-``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..analysis.robustness import SuiteSummary
from ..store.landscape import group_names
from .style import default_labels
from .tables import aligned

ORDER = ("imagenet", "imagenet-r", "imagenet-c", "cifar10-c", "cifar100-c")
NAMES = {"imagenet": "ImageNet", "imagenet-r": "ImageNet-R", "imagenet-c": "ImageNet-C", "cifar10-c": "CIFAR-10-C",
         "cifar100-c": "CIFAR-100-C"}
CLEAN_NAMES = {"cifar10-c": "CIFAR-10", "cifar100-c": "CIFAR-100"}
Value = Callable[[SuiteSummary], Optional[float]]


@dataclass
class Table:
    """groups: (title, columns spanned) over ``columns``; rows: the label, then one cell per column;
    notes: why some values are not given."""

    groups: list[tuple[str, int]]
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]


def _suite_order(summaries: Sequence[SuiteSummary]) -> list[str]:
    keys = list(dict.fromkeys(s.suite for s in summaries))
    return sorted(keys, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), keys.index(k)))


def _columns(summaries: Sequence[SuiteSummary]) -> list[tuple[str, str, bool]]:
    """(suite, column title, clean?) per accuracy column."""
    columns = []
    for key in _suite_order(summaries):
        dataset = key.partition(":")[2]
        if key not in ("imagenet", "imagenet-r", "imagenet-c") and any(s.clean for s in summaries if s.suite == key):
            columns.append((key, CLEAN_NAMES.get(key, dataset), True))
        columns.append((key, NAMES.get(key, f"{dataset}-C"), False))
    return columns


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table6(summaries: Sequence[SuiteSummary], labels: Optional[Sequence[str]] = None) -> Table:
    """The table of ``summaries`` (any checkpoints and suites); ``labels``: one per checkpoint, in
    order of first appearance (default: the optimizer each records, else the file's name)."""
    checkpoints = list(dict.fromkeys(s.checkpoint for s in summaries))
    optimizers = [next(s.optimizer for s in summaries if s.checkpoint == c) for c in checkpoints]
    labels = list(labels) if labels else default_labels(optimizers, group_names(checkpoints))
    columns = _columns(summaries)
    with_mce = any(s.errors for s in summaries)
    with_relative = any(s.errors and s.errors.relative_mce is not None for s in summaries)
    rows = []
    for checkpoint, label in zip(checkpoints, labels):
        mine = {s.suite: s for s in summaries if s.checkpoint == checkpoint}
        row = [label]
        for metric in ("top1", "top5"):
            for key, _, clean in columns:
                s = mine.get(key)
                score = None if s is None else (s.clean if clean else s)
                row.append(_percent(None if score is None else getattr(score, metric)))
        errors = mine["imagenet-c"].errors if "imagenet-c" in mine else None
        if with_mce:
            row.append("-" if errors is None else f"{errors.mce:.2f}")
        if with_relative:
            row.append("-" if errors is None or errors.relative_mce is None else f"{errors.relative_mce:.2f}")
        rows.append(row)
    titles = [title for _, title, _ in columns]
    extra = ["mCE"] * with_mce + ["rel. mCE"] * with_relative
    groups = [("Top-1 Acc (%)", len(titles)), ("Top-5 Acc (%)", len(titles))] + ([("", len(extra))] if extra else [])
    notes = list(dict.fromkeys(s.note for s in summaries if s.note))
    return Table(groups, ["Method", *titles, *titles, *extra], rows, notes)


def _labelled_columns(table: Table) -> list[str]:
    """Column titles with their group (``ImageNet top-1``), for formats without spanning headers."""
    names, i = [table.columns[0]], 1
    for title, span in table.groups:
        short = title.split(" ")[0].lower()
        names += [f"{c} {short}" if title else c for c in table.columns[i:i + span]]
        i += span
    return names


def render_text(table: Table) -> str:
    """Aligned plain-text columns, headed like :func:`render_markdown`, notes below."""
    text = aligned([_labelled_columns(table), *table.rows])
    return text + "".join(f"\n{note}" for note in table.notes)


def render_markdown(table: Table) -> str:
    """A Markdown table (columns titled ``ImageNet top-1`` ...), notes as a list below."""
    header = _labelled_columns(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n" + "".join(f"\n- {note}" for note in table.notes) + ("\n" if table.notes else "")


def _tex(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%").replace("_", r"\_") \
               .replace("#", r"\#")


def render_latex(table: Table) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``) with the Top-1 / Top-5 groups spanning
    their columns, as the paper's Table 6; notes as LaTeX comments."""
    spec = "l" + "r" * (len(table.columns) - 1)
    spans, cuts, start = [""], [], 2
    for title, span in table.groups:
        spans.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex(title)}}}" if title else " & ".join([""] * span))
        if title:
            cuts.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(spans) + r" \\", " ".join(cuts),
             " & ".join(_tex(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"
