"""HDF5 file of ``cosine`` results (``cosine --out FILE.h5``): one group per checkpoint.

Layout (root attributes ``kind = "cosine"``, ``order``: JSON list of the group names in the
order their checkpoints were first written)::

    /<group>                  group name: the checkpoint path with "/" written as "|"
        attrs checkpoint, settings (JSON: how it was measured — the optimizer that took the
              step, its hyper-parameters, lr, batch sizes, radius ρ, pairs, seed), seconds,
              passes (extra forward+backward passes per pair), epoch and step (absent when
              the checkpoint records none), optimizer (the run's, absent if none)
        values (pairs, Q) f8  one row per (B^t, B^a) draw; attrs columns = JSON :data:`QUANTITIES`

A group is written when its checkpoint is done (the whole file rewritten atomically, the other
groups copied over), so a rerun computes only the missing checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from .h5io import atomic_h5, open_h5
from .spectrum import group_name

KIND = "cosine"
#: The quantities of one measurement (appendix A.3 of the paper): the two cosines, change =
#: (cosine_a − cosine_b)/cosine_a, and before (``_b``, at θ_l) and after (``_a``, at θ_{l+1}) the
#: norms of the train-batch gradient and of the auxiliary-batch gradient at its perturbed point,
#: and their dot product.
QUANTITIES = ("cosine_b", "cosine_a", "change", "train_norm_b", "aux_norm_b", "dot_b",
              "train_norm_a", "aux_norm_a", "dot_a")


@dataclass
class CosineRecord:
    """The measurements of one checkpoint.

    values: (pairs, len(QUANTITIES)) float64, one row per seeded (B^t, B^a) draw.
    settings: how they were measured (compared on reruns). passes: extra forward+backward passes
    per measurement. epoch, step: the checkpoint's (None: not recorded). optimizer: the
    optimizer the run recorded (None: unknown, e.g. a third-party file).
    """

    checkpoint: str
    settings: dict[str, Any]
    values: np.ndarray
    passes: int
    seconds: float
    epoch: Optional[int] = None
    step: Optional[int] = None
    optimizer: Optional[str] = None

    def column(self, name: str) -> np.ndarray:
        """The values of quantity ``name`` over the pairs, (pairs,)."""
        return self.values[:, QUANTITIES.index(name)]

    def mean(self, name: str) -> float:
        """The mean of quantity ``name`` over the pairs where it is finite (a change with
        cosine_a = 0 is NaN); NaN when it is nowhere."""
        finite = self._finite(name)
        return float(finite.mean()) if len(finite) else float("nan")

    def std(self, name: str) -> float:
        """The sample standard deviation (ddof 1) over the same pairs; 0 for a single one."""
        finite = self._finite(name)
        return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0

    def _finite(self, name: str) -> np.ndarray:
        values = self.column(name)
        return values[np.isfinite(values)]


def write_record(path: str | os.PathLike, record: CosineRecord) -> None:
    """Store ``record`` in ``path`` (replacing its group, keeping the others), atomically."""
    path = Path(path)
    name = group_name(record.checkpoint)
    with atomic_h5(path) as out:
        out.attrs["kind"] = KIND
        order: list[str] = []
        if path.exists():
            with _open(path) as old:
                order = json.loads(old.attrs["order"])
                for key in old:
                    if key != name:
                        old.copy(old[key], out, name=key)
        _write_group(out.create_group(name), record)
        out.attrs["order"] = json.dumps(order if name in order else [*order, name])


def _write_group(g: h5py.Group, r: CosineRecord) -> None:
    g.attrs.update(checkpoint=r.checkpoint, settings=json.dumps(r.settings), passes=r.passes, seconds=r.seconds)
    for key in ("epoch", "step", "optimizer"):
        if getattr(r, key) is not None:
            g.attrs[key] = getattr(r, key)
    g.create_dataset("values", data=np.asarray(r.values, dtype=np.float64))
    g["values"].attrs["columns"] = json.dumps(list(QUANTITIES))


def _read_group(g: h5py.Group) -> CosineRecord:
    if json.loads(g["values"].attrs["columns"]) != list(QUANTITIES):
        raise ValueError("its columns are not this version's")
    a = g.attrs
    return CosineRecord(str(a["checkpoint"]), json.loads(a["settings"]), g["values"][()], int(a["passes"]),
                        float(a["seconds"]), int(a["epoch"]) if "epoch" in a else None,
                        int(a["step"]) if "step" in a else None, str(a["optimizer"]) if "optimizer" in a else None)


def read_records(path: str | os.PathLike) -> dict[str, CosineRecord]:
    """Every group of ``path`` by checkpoint, in the order written."""
    with _open(path) as f:
        return {f[name].attrs["checkpoint"]: _read_group(f[name]) for name in json.loads(f.attrs["order"])}


def _open(path: str | os.PathLike) -> contextlib.AbstractContextManager[h5py.File]:
    """``open_h5`` for cosine result files only."""
    return open_h5(path, KIND, "cosine")


def stored_kind(path: str | os.PathLike) -> Optional[str]:
    """The kind of results an HDF5 file of this tool declares (``cosine``, ``history``, ``eigs``...;
    None: none); a missing or unreadable file is a one-line :class:`~alignsam_diag.errors.UserError`."""
    with open_h5(path) as f:
        kind = f.attrs.get("kind")
    return str(kind) if kind is not None else None
