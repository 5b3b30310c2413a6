"""Step-indexed logs of a training run, beside the per-epoch table in ``<run>/history.h5``.

``train --track-cosine-every N`` and ``--track-sharpness-every N`` measure every N optimizer
steps; each kind of log is one group of ``history.h5`` (written with the per-epoch table, the
whole file replaced atomically at the end of every epoch: :func:`~.history.write_history`)::

    /cosine                  attrs every, steps_per_epoch, settings (JSON: how it was measured)
        step (n,) i8         the optimizer step l (0-based) of each row, increasing
        epoch (n,) f8        l / steps_per_epoch: the epochs completed before that step
        cosine_b, cosine_a, change, train_norm_b, aux_norm_b, dot_b,
        train_norm_a, aux_norm_a, dot_a, lr (n,) f8
    /sharpness               attrs every, steps_per_epoch, settings (JSON)
        step (n,) i8, epoch (n,) f8
        lambda_max, residual (‖Hv − λv‖), lr (n,) f8; products (n,) i8 (Hessian-vector
        products spent on the row), converged (n,) bool, seconds (n,) f8
        vector (P,) f8       the last row's top eigenvector (the warm start of the next
                             measurement, also after ``--resume``)

Every dataset of a group whose first dimension is ``n`` is a column (one value per row); the
others (``vector``) are kept as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import h5py
import numpy as np

from ..errors import UserError
from .h5io import open_h5

#: The groups of ``history.h5`` that hold step logs, and the flag that records each.
KINDS = {"cosine": "--track-cosine-every", "sharpness": "--track-sharpness-every"}


@dataclass
class StepLog:
    """One kind of step-indexed log.

    columns: name -> (n,) array, one entry per logged step; ``step`` (int) is among them.
    arrays: other datasets of the group (e.g. ``vector``), stored as they are.
    every: the logging interval in steps. steps_per_epoch: optimizer steps per epoch of the run.
    settings: how the values were measured (JSON-able), e.g. the radius ρ or the sample count.
    """

    columns: dict[str, np.ndarray]
    every: int
    steps_per_epoch: int
    settings: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["step"])

    def before(self, step: int) -> "StepLog":
        """The rows of the steps before ``step`` (what a run resumed at ``step`` had logged)."""
        keep = self.columns["step"] < step
        return StepLog({k: v[keep] for k, v in self.columns.items()}, self.every, self.steps_per_epoch,
                       dict(self.settings), dict(self.arrays))


def write_logs(f: h5py.File, logs: Mapping[str, StepLog]) -> None:
    """Write ``logs`` (kind -> log) as groups of the open, new file ``f``."""
    for kind, log in logs.items():
        if len({len(v) for v in log.columns.values()}) > 1:
            raise ValueError(f"the {kind} log's columns have different lengths")
        group = f.create_group(kind)
        group.attrs.update(every=log.every, steps_per_epoch=log.steps_per_epoch, settings=json.dumps(log.settings),
                           columns=json.dumps(list(log.columns)))
        for name, values in {**log.columns, **log.arrays}.items():
            group.create_dataset(name, data=np.asarray(values))


def _read_group(group: h5py.Group) -> StepLog:
    names = json.loads(group.attrs["columns"])
    columns = {name: group[name][()] for name in names}
    if "step" not in columns or len({len(v) for v in columns.values()}) != 1:
        raise ValueError(f"its {group.name[1:]} log's columns are missing or of different lengths")
    arrays = {name: group[name][()] for name in group if name not in columns}
    return StepLog(columns, int(group.attrs["every"]), int(group.attrs["steps_per_epoch"]),
                   json.loads(group.attrs["settings"]), arrays)


def read_logs(path: str | os.PathLike) -> dict[str, StepLog]:
    """Every step log of a ``history.h5`` by kind (none: ``{}``); a damaged one is a one-line
    :class:`~alignsam_diag.errors.UserError`."""
    with open_h5(path, "history", "train") as f:
        return {kind: _read_group(f[kind]) for kind in KINDS if kind in f}


def read_log(path: str | os.PathLike, kind: str) -> StepLog:
    """The ``kind`` log ("cosine" or "sharpness") of a ``history.h5``; a file without one is a
    one-line :class:`~alignsam_diag.errors.UserError` saying how to record it."""
    found = read_logs(path).get(kind)
    if found is None or not len(found):
        raise UserError(f"{path}: holds no {kind} log; train with {KINDS[kind]} N to record one.")
    return found
