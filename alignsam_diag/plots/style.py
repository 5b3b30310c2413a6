"""One colour and one label per optimizer, shared by every figure kind.

A run's colour comes from the optimizer its checkpoint (or ``history.h5``) records, never from
its position among the inputs: SGD is the same blue in training curves, landscape panels and
spectral densities, whatever order the files are given in. Runs that record no optimizer, or
one this tool does not know, get colours of a neutral grey cycle instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import OptionError, UserError

# One colour per registered optimizer (alignsam_diag.optim.OPTIMIZERS); tab10-like, none grey.
PALETTE: dict[str, str] = {
    "sgd": "#1f77b4",
    "sam": "#ff7f0e",
    "align-sam": "#2ca02c",
    "asam": "#d62728",
    "align-asam": "#9467bd",
    "gsam": "#8c564b",
    "fsam": "#e377c2",
    "vasso": "#bcbd22",
    "looksam": "#17becf",
    "lookbehind-sam": "#393b79",
}
FALLBACK = ("#7f7f7f", "#303030", "#a9a9a9")  # greys for runs of no recorded or unknown optimizer

DISPLAY_NAMES: dict[str, str] = {
    "sgd": "SGD", "sam": "SAM", "asam": "ASAM", "align-sam": "Align-SAM", "align-asam": "Align-ASAM",
    "gsam": "GSAM", "fsam": "Friendly-SAM", "vasso": "VaSSO", "looksam": "LookSAM",
    "lookbehind-sam": "Lookbehind-SAM",
}


def colours(optimizers: Sequence[Optional[str]]) -> list[str]:
    """A colour per run from its optimizer name: :data:`PALETTE` for the registered ones; the
    others take :data:`FALLBACK` greys in order of first appearance (one grey per unknown name,
    one per run without a name)."""
    others: dict[object, str] = {}
    result = []
    for i, name in enumerate(optimizers):
        if name in PALETTE:
            result.append(PALETTE[name])
        else:
            key = i if name is None else name
            result.append(others.setdefault(key, FALLBACK[len(others) % len(FALLBACK)]))
    return result


def default_labels(optimizers: Sequence[Optional[str]], runs: Sequence[str]) -> list[str]:
    """Legend labels: the optimizer's name ("SGD", "Align-SAM"); the run name where none is
    recorded; ``"SAM (run-b)"`` for each of several runs of one optimizer; ``#1``, ``#2`` where
    labels would still repeat."""
    names = [DISPLAY_NAMES.get(o, o) if o else run for o, run in zip(optimizers, runs)]
    labels = [f"{name} ({run})" if names.count(name) > 1 and name != run else name for name, run in zip(names, runs)]
    return [f"{label} #{labels[:i].count(label) + 1}" if labels.count(label) > 1 else label
            for i, label in enumerate(labels)]


def parse_labels(text: Optional[str], runs: Sequence[str]) -> Optional[list[str]]:
    """The labels ``--labels`` gives (comma-separated, one per run in the inputs' order), or None
    when it is not given; a count that does not match ``runs``, an empty or a repeated label is a
    one-line :class:`UserError`."""
    if text is None:
        return None
    labels = [label.strip() for label in text.split(",")]
    if len(labels) != len(runs):
        raise UserError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s) ({', '.join(runs)}); "
                        "give one per run, comma-separated, in the same order.")
    if "" in labels or len(set(labels)) < len(labels):
        raise OptionError("labels", text, "every label must be non-empty and different from the others.")
    return labels
