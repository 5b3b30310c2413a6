"""Loss-landscape surface files (``landscape`` command): the HDF5 layout of the options
(:class:`~alignsam_diag.landscape_types.LandscapeSpec`, stored as JSON) and of each checkpoint's
:class:`~alignsam_diag.landscape_types.Surface`.

One file holds the surfaces of one or more checkpoints, all computed with the same options::

    /                         attrs: kind="landscape", spec (JSON: grid, ranges, directions,
                              seed, norm, data...), checkpoints (JSON list of group names)
    /surfaces/<name>/         one group per checkpoint; attrs: checkpoint (its path), spec,
                              params_sha256 (of θ, to refuse resuming on a changed file),
                              points_per_pass (grid points per forward, kept on resume),
                              optimizer (the name the checkpoint records; absent if none)
        xcoordinates (nx,)    float64
        ycoordinates (ny,)    float64, 2-D surfaces only
        <split>_loss          float64, (ny, nx) for 2-D, (nx,) for 1-D: mean cross-entropy;
                              -1 where the cell is not computed yet (Li et al.'s mark)
        <split>_acc           float64, same shape: accuracy in PERCENT (0-100), as Li et al.'s
                              plot_1D.py/plot_2D.py expect; -1 where not computed
        <split>_accuracy      float64, same shape: accuracy as a fraction in [0, 1] (what this
                              tool reads; files without it: <split>_acc is read as a fraction)
        done                  bool, same shape: the cell is computed
        directions (dim, P)   float32: the directions, flattened over direction_names
        direction_names       the model's parameter names, in order
    /xcoordinates, /ycoordinates, /<split>_loss, /<split>_acc (percent)
                              hard links to the first checkpoint's datasets

``<split>`` is ``train`` or ``test``. The root names and their layout are those of Li et al.'s
``loss-landscape`` surface files, so their ``plot_2D.py``/``plot_1D.py`` read ours (and can be
pointed at ``/surfaces/<name>`` for the other checkpoints). Orientation: ``loss[i, j]`` is the
value at (x = xcoordinates[j], y = ycoordinates[i]) — rows follow y, as ``numpy.meshgrid(x, y)``
lays out the coordinates that ``plot_2D.py`` passes to ``contour(X, Y, Z)`` and as their
``crunch`` fills the flattened array. (Their code allocates the array as (nx, ny); for the
square grids it makes the two agree.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..landscape_types import Grid, Surface
from .h5io import atomic_h5, open_h5

KIND = "landscape"


@dataclass
class StoredSurface:
    """One checkpoint's group: its surface and what is needed to extend or resume it.

    directions: (dim, P) float32 over ``direction_names`` (None until first computed).
    optimizer: the optimizer name the checkpoint records (None: unknown, e.g. a third-party file)."""

    name: str
    checkpoint: str
    surface: Surface
    directions: Optional[np.ndarray] = None
    direction_names: list[str] = field(default_factory=list)
    params_sha256: str = ""
    points_per_pass: int = 0
    optimizer: Optional[str] = None


@dataclass
class LandscapeFile:
    """The whole file: the options every surface was computed with, and one group per checkpoint."""

    spec: dict[str, Any]
    groups: list[StoredSurface]

    @property
    def split(self) -> str:
        return str(self.spec.get("split", "train"))

    def group(self, name: Optional[str] = None) -> StoredSurface:
        """The group called ``name``; without a name, the only group."""
        if name is None and len(self.groups) == 1:
            return self.groups[0]
        for g in self.groups:
            if g.name == name:
                return g
        names = ", ".join(g.name for g in self.groups)
        raise UserError(f"the landscape file has no surface {name!r}; it holds: {names}.")


def group_names(checkpoints: Sequence[str | os.PathLike]) -> list[str]:
    """Readable, unique HDF5 group names for checkpoint paths: the file stem, or
    ``<folder>-<stem>`` where stems repeat (runs/sgd/last.pt, runs/sam/last.pt -> sgd-last, sam-last)."""
    paths = [Path(c) for c in checkpoints]
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}-{p.stem}" if p.parent.name else p.stem for p in paths]
    names = [n.replace("/", "_").lstrip(".") or "checkpoint" for n in names]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def _write_group(g: Any, stored: StoredSurface, split: str, spec_json: str) -> None:
    s = stored.surface
    g.attrs.update(checkpoint=stored.checkpoint, spec=spec_json, params_sha256=stored.params_sha256,
                   points_per_pass=stored.points_per_pass)
    if stored.optimizer is not None:
        g.attrs["optimizer"] = stored.optimizer
    g["xcoordinates"] = s.grid.x
    if s.grid.y is not None:
        g["ycoordinates"] = s.grid.y
    g[f"{split}_loss"] = np.where(s.done, s.loss, -1.0)
    g[f"{split}_acc"] = np.where(s.done, 100.0 * s.acc, -1.0)  # Li et al.'s name and unit
    g[f"{split}_accuracy"] = np.where(s.done, s.acc, -1.0)
    g["done"] = s.done
    if stored.directions is not None:
        g["directions"] = stored.directions.astype(np.float32)
        g["direction_names"] = np.array(stored.direction_names, dtype=object)


def write_landscape(path: str | os.PathLike, landscape: LandscapeFile) -> None:
    """Write the whole file atomically (a reader sees the previous version or this one)."""
    split, spec_json = landscape.split, json.dumps(landscape.spec, sort_keys=True)
    with atomic_h5(path) as f:
        f.attrs.update(kind=KIND, spec=spec_json, checkpoints=json.dumps([g.name for g in landscape.groups]))
        for stored in landscape.groups:
            _write_group(f.create_group(f"surfaces/{stored.name}"), stored, split, spec_json)
        first = f[f"surfaces/{landscape.groups[0].name}"]
        for name in ("xcoordinates", "ycoordinates", f"{split}_loss", f"{split}_acc"):
            if name in first:
                f[name] = first[name]  # a hard link: the same data under Li et al.'s root names


def _read_group(g: Any, name: str, split: str) -> StoredSurface:
    grid = Grid(g["xcoordinates"][()], g["ycoordinates"][()] if "ycoordinates" in g else None)
    done = g["done"][()].astype(bool)
    # the fraction; older files kept it under Li et al.'s name
    accuracy = g[f"{split}_accuracy"] if f"{split}_accuracy" in g else g[f"{split}_acc"]
    surface = Surface(grid, np.where(done, g[f"{split}_loss"][()], np.nan),
                      np.where(done, accuracy[()], np.nan), done)
    directions = g["directions"][()] if "directions" in g else None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["direction_names"][()]] if "directions" in g else []
    optimizer = g.attrs.get("optimizer")
    return StoredSurface(name, str(g.attrs["checkpoint"]), surface, directions, names,
                         str(g.attrs.get("params_sha256", "")), int(g.attrs.get("points_per_pass", 0)),
                         None if optimizer is None else str(optimizer))


def read_landscape(path: str | os.PathLike) -> LandscapeFile:
    """Read a file written by :func:`write_landscape`; anything else is a one-line UserError."""
    with open_h5(path, KIND, "landscape") as f:
        spec = json.loads(f.attrs["spec"])
        split = str(spec.get("split", "train"))
        groups = [_read_group(f[f"surfaces/{name}"], name, split) for name in json.loads(f.attrs["checkpoints"])]
    return LandscapeFile(spec, groups)
