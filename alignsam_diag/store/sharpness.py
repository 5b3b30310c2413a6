"""HDF5 file of ``sharpness`` results: a table with one row per (checkpoint, measure, norm,
adaptive, ρ, m), plus λ_max and the Hessian trace per checkpoint when ``--with-eigs`` asked for them.

Layout (columns are datasets of equal length, row i across them is one result)::

    /                       attrs kind = "sharpness", settings (JSON: the options every row was
                            computed with — steps, restarts, draws, seed, bn, params, momentum,
                            step_size — and the samples: split, samples, dataset, and with
                            --bn train the batch_size, whose chunks set the batch statistics)
    /rows/checkpoint (R,)   str     the checkpoint path as given
          optimizer         str     the optimizer the checkpoint records ("" if none)
          measure           str     "worst" | "average"
          norm              str     "l2" | "linf"
          adaptive          bool
          rho               f8      the radius (in units of |w| when adaptive)
          m                 i8      samples per group (m-sharpness); = samples: the plain measure
          loss_increase, loss_stderr, error_increase, error_stderr, base_loss, base_error,
          delta_norm, seconds  f8   (see :class:`SharpnessEstimate`; NaN where undefined)
          samples, groups, ascent_steps, draws  i8
    /eigs/checkpoint (E,)   str
          lambda_max, trace, trace_stderr  f8;  products i8;  converged bool
                            (Lanczos λ_max, largest algebraic, tol 1e-3; Hutch++ with 99 products;
                            the rows' params and seed)

Rows are written as they finish, by rewriting the (small) file atomically, so an interrupted
run keeps every finished row and a rerun computes only the missing ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import h5py
import numpy as np

from .h5io import atomic_h5, open_h5

KIND = "sharpness"


@dataclass
class SharpnessEstimate:
    """One sharpness value over N samples in groups of m.

    loss_increase: Σ_g (n_g/N)·[L_g(w + δ_g) − L_g(w)] (mean cross-entropy units);
    error_increase: the same for the error rate (a fraction, 0.01 = one point).
    loss_stderr, error_stderr: standard errors — over the random draws (average-case) or over
        the groups (worst-case; NaN for one group).
    base_loss, base_error: at w. samples: N. m: samples per group. groups: their number.
    ascent_steps: gradient ascent steps made (worst-case, over all groups and restarts; 0 for
        average-case). draws: random perturbations per group (average-case; 0 for worst-case).
    delta_norm: the largest ‖δ ⊘ a‖ (the ball's own norm, ≤ ρ) among the groups' maximisers
        (worst-case; NaN for average-case). seconds: wall time.
    """

    loss_increase: float
    loss_stderr: float
    error_increase: float
    error_stderr: float
    base_loss: float
    base_error: float
    samples: int
    m: int
    groups: int
    ascent_steps: int
    draws: int
    delta_norm: float
    seconds: float


@dataclass
class SharpnessRow:
    """One result: which checkpoint and measure, and its estimate."""

    checkpoint: str
    measure: str
    norm: str
    adaptive: bool
    rho: float
    estimate: SharpnessEstimate
    optimizer: Optional[str] = None

    @property
    def key(self) -> tuple[str, str, str, bool, float, int]:
        """What identifies a row in a file: (checkpoint, measure, norm, adaptive, ρ, m)."""
        return (self.checkpoint, self.measure, self.norm, self.adaptive, self.rho, self.estimate.m)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (NaN stays NaN): the key fields, the optimizer and every estimate field."""
        return {"checkpoint": self.checkpoint, "optimizer": self.optimizer, "measure": self.measure,
                "norm": self.norm, "adaptive": self.adaptive, "rho": self.rho, **asdict(self.estimate)}


@dataclass
class CheckpointEigs:
    """λ_max (largest algebraic Hessian eigenvalue, Lanczos) and tr(H) ± one standard error
    (Hutch++) of a checkpoint on the same samples; products: Hessian-vector products used."""

    checkpoint: str
    lambda_max: float
    trace: float
    trace_stderr: float
    products: int
    converged: bool


@dataclass
class SharpnessFile:
    """The whole file: the settings shared by every row, the rows, the checkpoints' eigs."""

    settings: dict[str, Any]
    rows: list[SharpnessRow] = field(default_factory=list)
    eigs: list[CheckpointEigs] = field(default_factory=list)

    def row(self, key: tuple[str, str, str, bool, float, int]) -> Optional[SharpnessRow]:
        return next((r for r in self.rows if r.key == key), None)

    def put(self, row: SharpnessRow) -> None:
        """Add ``row``, replacing one with the same key."""
        self.rows = [r for r in self.rows if r.key != row.key] + [row]

    def eigs_of(self, checkpoint: str) -> Optional[CheckpointEigs]:
        return next((e for e in self.eigs if e.checkpoint == checkpoint), None)


ROW_TEXT = ("checkpoint", "optimizer", "measure", "norm")
ESTIMATE_FIELDS = [f.name for f in fields(SharpnessEstimate)]
EIGS_FIELDS = [f.name for f in fields(CheckpointEigs)]


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], str):
        return np.array(values, dtype=h5py.string_dtype())
    return np.array(values)


def write_sharpness(path: str | os.PathLike, results: SharpnessFile) -> None:
    """Write the whole file atomically (a reader sees the previous version or this one)."""
    with atomic_h5(path) as f:
        f.attrs.update(kind=KIND, settings=json.dumps(results.settings, sort_keys=True))
        rows = f.create_group("rows")
        table: dict[str, list[Any]] = {name: [] for name in (*ROW_TEXT, "adaptive", "rho", *ESTIMATE_FIELDS)}
        for r in results.rows:
            values = {**r.as_dict(), "optimizer": r.optimizer or ""}
            for name in table:
                table[name].append(values[name])
        for name, values in table.items():
            rows.create_dataset(name, data=_column(values))
        eigs = f.create_group("eigs")
        for name in EIGS_FIELDS:
            values = [getattr(e, name) for e in results.eigs]
            eigs.create_dataset(name, data=_column(values))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_sharpness(path: str | os.PathLike) -> SharpnessFile:
    """Read a file written by :func:`write_sharpness`; anything else is a one-line UserError."""
    with open_h5(path, KIND, "sharpness") as f:
        settings = json.loads(f.attrs["settings"])
        g = f["rows"]
        columns = {name: g[name][()] for name in (*ROW_TEXT, "adaptive", "rho", *ESTIMATE_FIELDS)}
        rows = []
        for i in range(len(columns["checkpoint"])):
            estimate = SharpnessEstimate(**{name: _number(columns[name][i]) for name in ESTIMATE_FIELDS})
            rows.append(SharpnessRow(_text(columns["checkpoint"][i]), _text(columns["measure"][i]),
                                     _text(columns["norm"][i]), bool(columns["adaptive"][i]),
                                     float(columns["rho"][i]), estimate, _text(columns["optimizer"][i]) or None))
        e = {name: f["eigs"][name][()] for name in EIGS_FIELDS}
        eigs = [CheckpointEigs(_text(e["checkpoint"][i]), float(e["lambda_max"][i]), float(e["trace"][i]),
                               float(e["trace_stderr"][i]), int(e["products"][i]), bool(e["converged"][i]))
                for i in range(len(e["checkpoint"]))]
    return SharpnessFile(settings, rows, eigs)


def _number(value: Any) -> float | int:
    """A stored numpy scalar as a Python int (integer columns) or float."""
    return int(value) if isinstance(value, np.integer) else float(value)
