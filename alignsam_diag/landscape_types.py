"""The loss-landscape types that both the engine (:mod:`alignsam_diag.analysis.landscape`) and
the file layer (:mod:`alignsam_diag.store.landscape`) use: the options :class:`LandscapeSpec`,
the cell coordinates :class:`Grid` and the result :class:`Surface`.

Plain data and checks only: this module computes no surface and reads no file, so the store can
map these types to HDF5 without importing the analysis code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from .errors import OptionError
from .memory import require_memory

#: How random directions are scaled to the model's weights (``--norm``).
NORMS = ("filter", "layer", "none")
#: The kinds of ``--directions`` that take an argument after ``:``.
DIRECTION_FILES = ("interpolate", "eigs", "surface")
BYTES_PER_CELL = 64  # host memory per cell of one surface: values, marks, coordinates and their copies on save


def parse_directions(text: str) -> tuple[str, str]:
    """The ``--directions`` option as (kind, argument): ``random`` (no argument),
    ``interpolate:CKPT``, ``eigs:FILE.h5`` or ``surface:FILE.h5``; anything else is a UserError.
    What each kind means: :func:`alignsam_diag.analysis.directions.directions_from_source`."""
    kind, _, argument = text.partition(":")
    if not (kind == "random" and not argument or kind in DIRECTION_FILES and argument):
        raise OptionError("directions", text, "choose random, interpolate:CKPT, eigs:FILE.h5 or surface:FILE.h5.")
    return kind, argument


@dataclass
class Grid:
    """Cell coordinates: x (nx,), y (ny,) or None for a 1-D line.

    Cell (i, j) of a 2-D grid sits at (x[j], y[i]); its flat index is i·nx + j."""

    x: np.ndarray
    y: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def points(self, cells: np.ndarray) -> np.ndarray:
        """Coordinates (len(cells), dim) of the flat cell indices ``cells``."""
        cells = np.asarray(cells)
        if self.y is None:
            return self.x[cells][:, None]
        rows, cols = np.divmod(cells, len(self.x))
        return np.stack([self.x[cols], self.y[rows]], axis=1)

    def origin_cell(self) -> Optional[int]:
        """Flat index of the cell at the origin (the model itself), or None if no cell is there."""
        zero_x = np.flatnonzero(self.x == 0)
        zero_y = np.array([0]) if self.y is None else np.flatnonzero(self.y == 0)
        if len(zero_x) == 0 or len(zero_y) == 0:
            return None
        return int(zero_y[0] * len(self.x) + zero_x[0]) if self.y is not None else int(zero_x[0])


@dataclass
class Surface:
    """Loss (mean cross-entropy, nats) and accuracy (fraction) at each cell of ``grid``.

    All three arrays have ``grid.shape``; ``loss`` and ``acc`` are NaN where ``done`` is False."""

    grid: Grid
    loss: np.ndarray
    acc: np.ndarray
    done: np.ndarray

    @classmethod
    def empty(cls, grid: Grid) -> "Surface":
        return cls(grid, np.full(grid.shape, np.nan), np.full(grid.shape, np.nan), np.zeros(grid.shape, bool))

    def record(self, cells: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        """Store the values of the flat cell indices ``cells`` and mark them done."""
        self.loss.reshape(-1)[cells] = loss
        self.acc.reshape(-1)[cells] = acc
        self.done.reshape(-1)[cells] = True


@dataclass(kw_only=True)
class LandscapeSpec:
    """Everything that fixes a surface's values; resuming a file requires the same spec.

    dim: 1 or 2. grid: points per axis. xrange, yrange: (low, high) coordinates (y: 2-D only).
    directions: ``random``, ``interpolate:CKPT``, ``eigs:FILE.h5`` or ``surface:FILE.h5``
    (:func:`parse_directions`); seed, norm, ignore_biasbn: for random ones.
    data, split, samples (None = the whole split), batch_size: the fixed samples.
    bn: ``eval`` (stored statistics) or ``recompute`` (re-estimated per point from
    ``bn_batches`` training batches)."""

    dim: int = 2
    grid: int = 51
    xrange: tuple[float, float] = (-1.0, 1.0)
    yrange: tuple[float, float] = (-1.0, 1.0)
    directions: str = "random"
    seed: int = 0
    norm: str = "filter"
    ignore_biasbn: bool = True
    data: Optional[str] = None
    split: str = "train"
    samples: Optional[int] = 4096
    batch_size: int = 512
    bn: str = "eval"
    bn_batches: int = 4

    def validate(self) -> None:
        parse_directions(self.directions)
        problems = [
            ("dim", self.dim not in (1, 2), "choose 1 or 2."),
            ("grid", self.grid < 2, "needs at least 2 points per axis."),
            ("xrange", not np.isfinite(self.xrange).all(), "the ends must be finite numbers."),
            ("yrange", not np.isfinite(self.yrange).all(), "the ends must be finite numbers."),
            ("xrange", not self.xrange[0] < self.xrange[1], "the low end must be below the high end."),
            ("yrange", not self.yrange[0] < self.yrange[1], "the low end must be below the high end."),
            ("norm", self.norm not in NORMS, f"choose one of {', '.join(NORMS)}."),
            ("split", self.split not in ("train", "test"), "choose train or test."),
            ("bn", self.bn not in ("eval", "recompute"), "choose eval or recompute."),
            ("bn_batches", self.bn_batches < 1, "must be at least 1."),
        ]
        for option, wrong, reason in problems:
            if wrong:
                raise OptionError(option, getattr(self, option), reason)
        cells = self.grid ** self.dim
        require_memory(cells * BYTES_PER_CELL, f"a {'×'.join([str(self.grid)] * self.dim)} grid ({cells:,} cells)",
                       "choose a smaller --grid")

    def make_grid(self) -> Grid:
        return Grid(_axis(*self.xrange, self.grid), _axis(*self.yrange, self.grid) if self.dim == 2 else None)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (tuples as lists), as stored in the file."""
        return json.loads(json.dumps(asdict(self)))


def _axis(low: float, high: float, num: int) -> np.ndarray:
    """``num`` evenly spaced coordinates; one within rounding of 0 is made exactly 0 so that the
    model itself is a cell."""
    values = np.linspace(low, high, num)
    values[np.abs(values) < 1e-9 * (high - low)] = 0.0
    return values
