"""The summary of a sweep (``<sweep>/sweep.h5``): one row per finished run, for Figure 2 and Table 9.

Layout (root attributes ``kind = "sweep"``, ``keys``: JSON list of the swept options (dotted
:class:`~alignsam_diag.train.TrainConfig` names, sorted), ``planned``: JSON list of every run
name of the spec, in its order, ``spec``: the spec as JSON). Datasets, one entry per finished
run (R rows, in the spec's order)::

    name (R,) str            the run's folder name under runs/ (from its swept values)
    group (R,) str           the name without the seed keys: runs of one group differ only in seed
    run_dir (R,) str         the run folder, relative to the summary's folder (runs/<name>)
    values (R,) str          JSON object: swept option -> the run's resolved value (null: the run has none)
    config (R,) str          JSON: the run's resolved configuration, as its checkpoints store it
    optimizer (R,) str       the variant's name
    status (R,) str          "finished", or "diverged" (loss NaN/inf; metrics NaN)
    seed, epochs (R,) i8     the training seed; epochs trained
    train_loss, test_loss (R,) f8   mean cross-entropy of the last epoch (nats)
    train_acc, test_acc (R,) f8     top-1 accuracy of the last epoch, in [0, 1]
    epoch_seconds (R,) f8    mean training time per epoch (s; evaluation and checkpoints excluded)
    total_seconds (R,) f8    training time of all epochs (s), summed over resumed sessions

The sweep rewrites the whole (small) file atomically after each run, so a reader sees every run
finished so far. :func:`seed_groups` gathers the runs that differ only in seed, for mean ± std.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import h5py
import numpy as np

from ..errors import UserError
from .h5io import atomic_h5, open_h5

KIND = "sweep"
#: Swept options whose runs are repeats of one setting, gathered in one group for mean ± std.
SEED_KEYS = ("seed", "data.seed")
FILE_NAME = "sweep.h5"
TEXT = ("name", "group", "run_dir", "optimizer", "status")
JSON = ("values", "config")
INTEGERS = ("seed", "epochs")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "total_seconds")


@dataclass
class SweepRecord:
    """One finished run of a sweep (see the module docstring for each field's meaning and unit)."""

    name: str
    group: str
    run_dir: str
    values: dict[str, Any]
    config: dict[str, Any]
    optimizer: str
    seed: int
    epochs: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    epoch_seconds: float
    total_seconds: float
    status: str = "finished"

    def option(self, name: str) -> Any:
        """A resolved option by dotted name ("lr", "hyper.lam", "aux_batch_size"); None if unset."""
        value: Any = self.config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value


@dataclass
class SweepSummary:
    """What ``sweep.h5`` holds: the swept ``keys``, the ``planned`` run names, the finished
    ``records`` (in plan order) and the ``spec`` (JSON-able)."""

    keys: list[str]
    planned: list[str]
    records: list[SweepRecord] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The planned runs without a record yet, in plan order."""
        done = {r.name for r in self.records}
        return [name for name in self.planned if name not in done]

    def finished(self) -> list[SweepRecord]:
        """The records of runs that finished (diverged ones left out)."""
        return [r for r in self.records if r.status == "finished"]

    def distinct(self, option: str) -> list[Any]:
        """The different resolved values of ``option`` among the finished runs, in order of first
        appearance (None included where a run has no such option), e.g. to tell whether a sweep
        varies λ (``distinct("hyper.lam")``) or |B^a|."""
        found: list[Any] = []
        for record in self.finished():
            value = record.option(option)
            if value not in found:
                found.append(value)
        return found


@dataclass
class SeedGroup:
    """The runs of one group (same options but the seed) and their statistics over seeds."""

    group: str
    records: list[SweepRecord]

    @property
    def first(self) -> SweepRecord:
        return self.records[0]

    @property
    def seeds(self) -> int:
        return len(self.records)

    def values(self, metric: str) -> np.ndarray:
        """``metric`` (a name of :data:`METRICS`) of each run, shape (seeds,)."""
        return np.array([getattr(r, metric) for r in self.records], dtype=np.float64)

    def mean(self, metric: str) -> float:
        return float(np.mean(self.values(metric)))

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds (ddof = 1); NaN for a single run."""
        values = self.values(metric)
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def seed_groups(records: list[SweepRecord]) -> list[SeedGroup]:
    """The ``records`` gathered by group, groups in order of their first run."""
    groups: dict[str, list[SweepRecord]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    return [SeedGroup(name, members) for name, members in groups.items()]


def summary_file(path: str | os.PathLike) -> Path:
    """The summary file that ``path`` names: ``path/sweep.h5`` for a sweep folder, else ``path``."""
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


def sweep_name(path: str | os.PathLike) -> str:
    """A short name of the sweep for output files: the sweep folder's name (``runs/lam`` and
    ``runs/lam/sweep.h5`` are both ``lam``), else the file's stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    return (path.resolve().parent.name or path.stem) if path.name == FILE_NAME else path.stem


def write_summary(path: str | os.PathLike, summary: SweepSummary) -> None:
    """Replace ``path`` with ``summary``, atomically."""
    records = summary.records
    with atomic_h5(path) as f:
        f.attrs.update(kind=KIND, keys=json.dumps(summary.keys), planned=json.dumps(summary.planned),
                       spec=json.dumps(summary.spec))
        strings = h5py.string_dtype()
        for name in TEXT:
            f.create_dataset(name, data=np.array([getattr(r, name) for r in records], dtype=strings))
        for name in JSON:
            f.create_dataset(name, data=np.array([json.dumps(getattr(r, name)) for r in records], dtype=strings))
        for name in INTEGERS:
            f.create_dataset(name, data=np.array([getattr(r, name) for r in records], dtype=np.int64))
        for name in METRICS:
            f.create_dataset(name, data=np.array([getattr(r, name) for r in records], dtype=np.float64))


def read_summary(path: str | os.PathLike) -> SweepSummary:
    """Read a summary written by :func:`write_summary` (``path``: the file or its sweep folder);
    anything else is a one-line :class:`UserError`."""
    path = summary_file(path)
    with open_h5(path, KIND, "sweep") as f:
        columns: dict[str, list[Any]] = {}
        for name in TEXT + JSON:
            columns[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in f[name][()]]
        for name in JSON:
            columns[name] = [json.loads(v) for v in columns[name]]
        for name in INTEGERS:
            columns[name] = [int(v) for v in f[name][()]]
        for name in METRICS:
            columns[name] = [float(v) for v in f[name][()]]
        if len({len(v) for v in columns.values()}) != 1:
            raise ValueError("its columns have different lengths")
        records = [SweepRecord(**{name: values[i] for name, values in columns.items()})
                   for i in range(len(columns["name"]))]
        return SweepSummary(json.loads(f.attrs["keys"]), json.loads(f.attrs["planned"]), records,
                            json.loads(f.attrs["spec"]))


def finished_summary(path: str | os.PathLike, what: Optional[str] = None) -> SweepSummary:
    """:func:`read_summary`, refusing in one line a sweep without a finished run (``what``: the
    figure or table that needs them, for the message)."""
    summary = read_summary(path)
    if not summary.finished():
        need = f" for {what}" if what else ""
        raise UserError(f"{summary_file(path)}: no finished run yet{need}; run (or rerun) alignsam-diag sweep "
                        "into this folder first.")
    return summary
