"""Progress reporting without printing.

Long-running library functions accept ``progress: ProgressFn | None``. They call it with a
:class:`ProgressUpdate` after each unit of work; the CLI turns those into a Rich progress
bar, a notebook can ignore them or draw its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class ProgressUpdate:
    """One report from a long-running job.

    task: short name of the job ("train", "lanczos", "landscape", ...).
    completed / total: units done and units expected (``total`` may be None when unknown).
    info: extra numbers to show next to the bar (loss, accuracy, images/s, ...).
    log: whether a log (a job's output file, no live bar) should show this update as a line:
        True for a milestone (an epoch, a Hessian-vector product of Lanczos), False for a
        fine-grained step (a batch) that only a live bar shows, None for "at every ~5 % of
        ``total`` and at the end".
    """

    task: str
    completed: float
    total: Optional[float] = None
    info: dict[str, float | str] = field(default_factory=dict)
    log: Optional[bool] = None


ProgressFn = Callable[[ProgressUpdate], None]


def report(progress: Optional[ProgressFn], task: str, completed: float,
           total: Optional[float] = None, *, log: Optional[bool] = None, **info: float | str) -> None:
    """Call ``progress`` if one was given (``log``: see :class:`ProgressUpdate`)."""
    if progress is not None:
        progress(ProgressUpdate(task, completed, total, dict(info), log))
