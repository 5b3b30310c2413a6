"""HDF5 file of ``robustness`` results: per checkpoint and suite, one row per finished cell.

Layout (root attributes ``kind = "robustness"`` and ``order``: JSON list of the groups
``<checkpoint>/<suite>`` in the order they were first written)::

    /<checkpoint>/<suite>/        checkpoint: its path with "/" written as "|"; suite: the suite's
                                  key (imagenet, imagenet-c, corrupt:fashion-mnist...), "/" as "|"
        attrs checkpoint, suite, settings (JSON: root, preprocess, data set, seed, normalisation,
              amp... — what the results depend on), params_sha256 (of the model's parameters, to
              refuse resuming against a changed checkpoint), optimizer (the name the checkpoint
              records; absent if none)
        corruption (n,) str       a corruption name, or "clean" / "renditions"
        severity (n,) i8          1–5; 0 for clean and renditions
        correct1, correct5 (n,) i8   images whose label is the top-1 / among the top-5 outputs
                                  (top-min(5, classes))
        samples (n,) i8           images in the cell
        top1, top5 (n,) f8        correct1 / samples, correct5 / samples (fractions in [0, 1])
        seconds (n,) f8           wall time of the cell's evaluation

A row is written once its cell is finished (the whole small file rewritten atomically), so a
killed run keeps every finished cell and a rerun computes only the missing ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from .h5io import atomic_h5, open_h5
from .spectrum import group_name

KIND = "robustness"
INTEGERS = ("severity", "correct1", "correct5", "samples")


@dataclass
class CellScore:
    """One finished cell: ``correct1`` / ``correct5`` of ``samples`` images right at top-1 / top-5."""

    corruption: str
    severity: int
    correct1: int
    correct5: int
    samples: int
    seconds: float = 0.0

    @property
    def top1(self) -> float:
        return self.correct1 / self.samples

    @property
    def top5(self) -> float:
        return self.correct5 / self.samples

    @property
    def error(self) -> float:
        """Top-1 error, 1 − top1."""
        return 1.0 - self.top1


@dataclass
class SuiteRecord:
    """Everything stored for one (checkpoint, suite): its settings and its finished cells."""

    checkpoint: str
    suite: str
    settings: dict[str, Any]
    params_sha256: str = ""
    optimizer: Optional[str] = None
    cells: list[CellScore] = field(default_factory=list)

    def score(self, corruption: str, severity: int) -> Optional[CellScore]:
        """The stored cell, or None if it is not finished."""
        return next((c for c in self.cells if (c.corruption, c.severity) == (corruption, severity)), None)

    @property
    def group(self) -> str:
        return f"{group_name(self.checkpoint)}/{self.suite.replace('/', '|')}"


def write_records(path: str | os.PathLike, records: list[SuiteRecord]) -> None:
    """Write every record to ``path``, replacing it atomically (a reader sees the old or the new file)."""
    with atomic_h5(path) as f:
        f.attrs.update(kind=KIND, order=json.dumps([r.group for r in records]))
        for r in records:
            g = f.create_group(r.group)
            g.attrs.update(checkpoint=r.checkpoint, suite=r.suite, settings=json.dumps(r.settings, sort_keys=True),
                           params_sha256=r.params_sha256)
            if r.optimizer is not None:
                g.attrs["optimizer"] = r.optimizer
            g.create_dataset("corruption", data=np.array([c.corruption for c in r.cells], dtype=h5py.string_dtype()))
            for name in INTEGERS:
                g.create_dataset(name, data=np.array([getattr(c, name) for c in r.cells], dtype=np.int64))
            for name in ("top1", "top5", "seconds"):
                g.create_dataset(name, data=np.array([getattr(c, name) for c in r.cells], dtype=np.float64))


def read_records(path: str | os.PathLike) -> list[SuiteRecord]:
    """Every record of a file written by :func:`write_records`, in the order first written;
    anything else is a one-line :class:`~alignsam_diag.errors.UserError`."""
    with open_h5(Path(path), KIND, "robustness") as f:
        return [_read_group(f[name]) for name in json.loads(f.attrs["order"])]


def _read_group(g: h5py.Group) -> SuiteRecord:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["corruption"][()]]
    columns = {name: g[name][()] for name in (*INTEGERS, "seconds")}
    if any(len(column) != len(names) for column in columns.values()):
        raise ValueError(f"the columns of {g.name} have different lengths")
    cells = [CellScore(name, *(int(columns[k][i]) for k in INTEGERS), float(columns["seconds"][i]))
             for i, name in enumerate(names)]
    optimizer = g.attrs.get("optimizer")
    settings = json.loads(g.attrs["settings"])
    if not isinstance(settings, dict):
        raise ValueError(f"the settings of {g.name} are not a JSON object")
    return SuiteRecord(str(g.attrs["checkpoint"]), str(g.attrs["suite"]), settings, str(g.attrs["params_sha256"]),
                       None if optimizer is None else str(optimizer), cells)
