"""Atomic HDF5 writes and checked reads.

Results are written to ``<path>.tmp-<pid>`` and renamed over ``path`` only when complete
(through :func:`alignsam_diag.files.atomic_write`, the one atomic writer),
so a killed process never leaves a half-written or corrupt file behind: a reader sees either
the previous complete file or the new one. Long jobs that resume rewrite their whole (small)
result file this way after each chunk of work.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from ..errors import UserError, first_line
from ..files import atomic_write


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open a fresh HDF5 file for writing that replaces ``path`` atomically on success
    (:func:`alignsam_diag.files.atomic_write`: fsync, rename; a full disk is a one-line error).

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def write_atomic(path: str | os.PathLike, datasets: Mapping[str, Any],
                 attrs: Mapping[str, Any] | None = None) -> None:
    """Write ``datasets`` (name -> array; names may contain '/' for groups) and root
    ``attrs`` to ``path`` atomically."""
    with atomic_h5(path) as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=np.asarray(value))
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, kind: str | None = None, writer: str = "") -> Iterator[h5py.File]:
    """Open an existing HDF5 file read-only, turning a missing, corrupt or foreign file into a
    one-line :class:`UserError`.

    kind: the ``kind`` root attribute the file must carry (None: any); writer names the command
    that writes such files, for the message. A dataset or attribute missing or malformed inside
    the block (KeyError, ValueError — JSON errors included —, TypeError, IndexError) is reported
    as a damaged file, not as a crash."""
    path = Path(path)
    what = (f"{kind} result file" + (f" (written by `alignsam-diag {writer}`)" if writer else "")) if kind else "result file"
    article = "an" if what[0] in "aeiou" else "a"
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an HDF5 {what}; give the file's path.")
    if not path.exists():
        raise UserError(f"{path}: no such file. Check the path, or run the command that writes it first.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err.__class__.__name__}); "
                        "it may be truncated or corrupt — delete it and rerun the command that wrote it.") from err
    with f:
        if kind is not None and f.attrs.get("kind") != kind:
            found = f.attrs.get("kind")
            raise UserError(f"{path}: not {article} {what}" + (f"; it holds {found} results." if found else "."))
        try:
            yield f
        except (KeyError, ValueError, TypeError, IndexError) as err:
            reason = first_line(err)
            raise UserError(f"{path}: damaged or not written by this version of alignsam-diag ({reason}); "
                            "rerun the command that wrote it.") from None
