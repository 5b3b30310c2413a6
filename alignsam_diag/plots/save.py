"""Saving figures atomically (:func:`alignsam_diag.files.atomic_write`); the file name's extension,
.png or .pdf, picks the format.

``--out`` of every ``figures`` command means one thing (:func:`figure_path`): a name ending in
.png or .pdf is the figure file; any other name is a folder, into which the figure is written
under a descriptive default name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import OptionError, UserError
from ..files import atomic_write, check_writable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf")
# image formats matplotlib could write but this tool does not: refused, not taken for folder names
OTHER_IMAGES = ("svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "gif", "bmp")


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


def names_a_file(out: str | os.PathLike) -> bool:
    """Whether ``--out`` names the figure file itself (it ends in .png or .pdf) rather than a
    folder; another image extension (.svg, .jpg...) is a one-line :class:`UserError`."""
    out = Path(out)
    suffix = out.suffix[1:].lower()
    if suffix in OTHER_IMAGES:
        raise OptionError("out", out, "figures are written as .png or .pdf; end the name in one of them "
                          f"(for example {out.with_suffix('.pdf')}), or give a folder.")
    return suffix in FORMATS


def check_figure_out(out: str | os.PathLike) -> None:
    """Refuse, before any work, an ``--out`` (figure file or folder, :func:`names_a_file`) that
    cannot be written."""
    if names_a_file(out):
        check_figure_path(out)
    else:
        check_writable(out, folder=True)


def figure_path(out: str | os.PathLike, default_stem: str, fmt: Optional[str] = None) -> Path:
    """The figure file that ``--out`` means, checked writable: ``out`` itself when it ends in .png
    or .pdf, else ``out/<default_stem>.<fmt>`` (``out`` is a folder, made when missing; fmt None =
    png). A ``fmt`` that is not png/pdf, or that contradicts the file name's, is a :class:`UserError`."""
    out = Path(out)
    if fmt is not None and fmt not in FORMATS:
        raise OptionError("fmt", fmt, "choose png or pdf.")
    if not names_a_file(out):
        path = out / f"{default_stem}.{fmt or 'png'}"
    elif fmt is not None and figure_format(out) != fmt:
        raise UserError(f"--format {fmt} contradicts --out {out}; give one of the two.")
    else:
        path = out
    check_writable(path)
    return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` (.png at ``dpi``, .pdf as vectors) so that a reader never sees
    a half-written file; a full disk leaves the previous file as it was."""
    path = Path(path)
    fmt = figure_format(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return path
