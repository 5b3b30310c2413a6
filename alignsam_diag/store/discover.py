"""Finding stored results: every HDF5 file this tool wrote under some folders, by kind.

A result file carries its kind in the root attribute ``kind`` (``history``, ``eigs``,
``landscape``, ``cosine``, ``robustness``, ``sharpness``, ``sweep``); files of other programs,
temporary files of a running job (``*.tmp-<pid>``) and unreadable files are passed over and
listed in :attr:`Found.skipped` with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py


@dataclass
class Found:
    """``files``: kind -> result files, each kind's in sorted path order; ``skipped``:
    (path, reason) for the .h5 files that are not results of this tool."""

    files: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def of(self, kind: str) -> list[Path]:
        return self.files.get(kind, [])


def result_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` attribute of an HDF5 file (None: none, or not readable as HDF5)."""
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
    except OSError:
        return None
    return kind.decode() if isinstance(kind, bytes) else (str(kind) if kind is not None else None)


def find_results(inputs: Sequence[str | os.PathLike]) -> Found:
    """Every result file among ``inputs``: a file is taken as it is, a folder searched
    recursively (``*.h5``). A path that does not exist is skipped with that reason."""
    found = Found()
    seen: set[Path] = set()
    for given in map(Path, inputs):
        if given.is_dir():
            candidates = sorted(p for p in given.rglob("*.h5") if ".tmp-" not in p.name)
        elif given.exists():
            candidates = [given]
        else:
            found.skipped.append((given, "no such file or folder"))
            continue
        for path in candidates:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            kind = result_kind(path)
            if kind is None:
                found.skipped.append((path, "not a result file of alignsam-diag"))
            else:
                found.files.setdefault(kind, []).append(path)
    return found
