"""Saving figures atomically (:func:`alignsam_diag.files.atomic_write`); the file name's extension,
.png or .pdf, picks the format."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from ..errors import UserError
from ..files import atomic_write, check_writable

FORMATS = ("png", "pdf")


def figure_format(path: str | os.PathLike) -> str:
    """``png`` or ``pdf`` from ``path``'s extension; any other name is a one-line :class:`UserError`."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    if fmt not in FORMATS:
        raise UserError(f"{path}: a figure file name must end in .png or .pdf (for example "
                        f"{path.with_name(path.stem + '.png')}).")
    return fmt


def check_figure_path(path: str | os.PathLike) -> None:
    """Refuse, before any work, a figure path that cannot be written or has no .png/.pdf extension."""
    check_writable(path)
    figure_format(path)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` (.png at ``dpi``, .pdf as vectors) so that a reader never sees
    a half-written file; a full disk leaves the previous file as it was."""
    path = Path(path)
    fmt = figure_format(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return path
