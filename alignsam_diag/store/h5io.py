"""Atomic HDF5 writes and checked reads.

Results are written to ``<path>.tmp-<pid>`` and renamed over ``path`` only when complete,
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

from ..errors import UserError


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open a fresh HDF5 file for writing that replaces ``path`` atomically on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open an existing HDF5 file read-only, turning a missing or corrupt file into a
    one-line :class:`UserError`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file. Check the path, or run the command that writes it first.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err.__class__.__name__}); "
                        "it may be truncated or corrupt — delete it and rerun the command that wrote it.") from err
    with f:
        yield f
