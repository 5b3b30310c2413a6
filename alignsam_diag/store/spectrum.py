"""HDF5 file of ``eigs`` results: one group per checkpoint.

Layout (root attributes ``kind = "eigs"``, ``order``: JSON list of the group names in the order
their checkpoints were first written — the order given to ``eigs``)::

    /<group>                      group name: the checkpoint path with "/" written as "|"
        attrs checkpoint, options (JSON), num_parameters, optimizer (the name the checkpoint
              records; absent if none), graphs (JSON: how the last session that wrote results
              made its products — mode "kept-graph" or "data-set", estimate_bytes of the kept
              graphs, budget_bytes, forced; absent if none was chosen)
        param_names (P_t,) str    parameters in the operator's scope, in order (Σ numel = P)
        eigenvalues (k,) f8       ordered by options["which"]
        residuals (k,) f8         true ‖Hv − λv‖ of each pair
          attrs hvps, seconds, converged, which, tol
        eigenvectors (k, P) f4    only with --save-vectors
        lanczos_state/            only while the Lanczos run is unfinished
          attrs steps (m, the committed products), restarts, seed, seconds
          basis (L+1, P) f8       rows 0 … m valid: q_0 … q_m (L: the run's product limit)
          coeffs (L, L+1) f8      rows 0 … m−1 valid: row j = H q_j in the basis (column j of C)
        trace/                    attrs value, stderr, hvps, seconds, method
        density/                  nodes, weights (runs, steps) f8; grid, density (G,) f8;
                                  attrs sigma, hvps, seconds

What a group holds is what is finished: a rerun computes only the missing parts. Finished parts
are written by rewriting the whole file atomically (other groups are copied over unchanged).

An unfinished Lanczos run is saved after every product in place, O(P) bytes per product
(:func:`save_state`): its two datasets are created once, with room reserved for all L + 1 rows
(chunks of one row, allocated at creation, sparse on disk until written), so a save only fills
the new rows, flushes and fsyncs them, and then overwrites ``steps`` — no save changes the
file's structure or touches another group. A reader trusts only the rows that ``steps``
covers, so after a kill at any moment the file is valid and resumes from the last committed
product.
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
import torch

from ..errors import UserError
from ..files import DISK_FULL, DiskFullError
from ..spectrum_types import SavedLanczos, SpectralDensity, Spectrum, TraceEstimate
from .h5io import atomic_h5, open_h5

KIND = "eigs"


@dataclass
class EigsRecord:
    """Everything stored for one checkpoint; parts not (yet) computed are None.

    state: an unfinished Lanczos run to continue. The spectrum's eigenvectors (k, P) are
    written as float32 when present; they are not read back here (see :func:`read_eigenvectors`).
    optimizer: the optimizer name the checkpoint records (None: unknown, e.g. a third-party file).
    graphs: how the products were made (``GraphPlan.as_dict()`` of
    :class:`~alignsam_diag.analysis.curvature.GraphPlan`), None if not chosen.
    """

    checkpoint: str
    options: dict[str, Any]
    param_names: list[str]
    num_parameters: int
    spectrum: Optional[Spectrum] = None
    state: Optional[SavedLanczos] = None
    trace: Optional[TraceEstimate] = None
    density: Optional[SpectralDensity] = None
    optimizer: Optional[str] = None
    graphs: Optional[dict[str, Any]] = None


def group_name(checkpoint: str | os.PathLike) -> str:
    return str(checkpoint).replace("/", "|")


def write_record(path: str | os.PathLike, record: EigsRecord) -> None:
    """Store ``record`` in ``path`` (replacing its group, keeping the others), atomically.
    Eigenvectors already stored for the record are kept when the record does not carry them
    (records read back by :func:`read_records` do not)."""
    path = Path(path)
    name = group_name(record.checkpoint)
    with atomic_h5(path) as out:
        out.attrs["kind"] = KIND
        group = out.create_group(name)
        _write_group(group, record)
        order: list[str] = []
        if path.exists():
            with _open_eigs(path) as old:
                order = _group_order(old)
                for key in old:
                    if key != name:
                        old.copy(old[key], out, name=key)
                    elif "eigenvectors" in old[key] and "eigenvectors" not in group and "eigenvalues" in group:
                        old.copy(old[key]["eigenvectors"], group)
        out.attrs["order"] = json.dumps(order if name in order else [*order, name])


def save_state(path: str | os.PathLike, record: EigsRecord) -> None:
    """Save ``record.state``, the unfinished Lanczos run of ``record``, writing only what is new
    since the last save when ``path`` holds the run's earlier products (the new basis and
    coefficient rows, then the committed count); otherwise, e.g. at the first save, the whole
    record atomically (:func:`write_record`) with room for ``state.limit`` products.

    A full disk raises the one-line :class:`~alignsam_diag.files.DiskFullError`; the file then
    still holds the run up to the last committed product."""
    path, state = Path(path), record.state
    try:
        if path.exists():
            # no HDF5 lock (``output_lock`` keeps other writers out, readers may look meanwhile);
            # no chunk cache, so that a failed write raises here and not when the file is closed
            with h5py.File(path, "r+", locking=False, rdcc_nbytes=0) as f:
                saved = f.get(f"{group_name(record.checkpoint)}/lanczos_state") if f.attrs.get("kind") == KIND else None
                if isinstance(saved, h5py.Group) and _continues(saved, state):
                    _append(f, saved, state)
                    return
    except OSError as err:
        if err.errno in DISK_FULL:
            raise DiskFullError(path, os.strerror(err.errno)) from None
        raise
    write_record(path, record)


def _continues(saved: h5py.Group, state: SavedLanczos) -> bool:
    """Whether ``state`` continues the run stored in ``saved`` and fits in its reserved rows."""
    rows, size = saved["basis"].shape
    return (size == state.size and int(saved.attrs["seed"]) == state.seed
            and int(saved.attrs["steps"]) <= state.steps < rows)


def _append(f: h5py.File, saved: h5py.Group, state: SavedLanczos) -> None:
    """Write the products ``state`` has beyond the committed ones into their reserved rows, make
    them durable, then commit them by overwriting ``steps`` (and ``restarts``, ``seconds``) in place."""
    committed = int(saved.attrs["steps"])
    if committed == state.steps:
        return
    _write_rows(saved, state, committed + 1)
    f.flush()
    os.fsync(f.id.get_vfd_handle())
    for key, value in (("steps", state.steps), ("restarts", state.restarts), ("seconds", state.seconds)):
        saved.attrs.modify(key, value)
    f.flush()


def _create_state(g: h5py.Group, state: SavedLanczos) -> None:
    """``lanczos_state`` with rows for ``state.limit`` products reserved (allocated now, written
    never, so sparse on disk), holding the state's rows and attributes."""
    rows = max(state.limit, state.steps, 1) + 1
    saved = g.create_group("lanczos_state")
    for name, shape in (("basis", (rows, state.size)), ("coeffs", (rows - 1, rows))):
        reserved = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        reserved.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        reserved.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        saved.create_dataset(name, shape=shape, dtype="f8", chunks=(1, shape[1]), dcpl=reserved)
    _write_rows(saved, state, 0)
    saved.attrs.update(steps=state.steps, restarts=state.restarts, seed=state.seed, seconds=state.seconds)


def _write_rows(saved: h5py.Group, state: SavedLanczos, first: int) -> None:
    """Basis rows ``first`` … steps and coefficient rows ``first`` − 1 … steps − 1 (whole rows,
    zero-padded, so that no reserved byte is ever read unwritten)."""
    basis, coeffs = state.basis, state.coeffs
    saved["basis"][first: state.steps + 1] = basis[first:].cpu().numpy()
    start = max(first - 1, 0)
    if start < state.steps:
        rows = np.zeros((state.steps - start, saved["coeffs"].shape[1]))
        rows[:, : state.steps + 1] = coeffs[:, start:].T.numpy()
        saved["coeffs"][start: state.steps] = rows


def _group_order(f: h5py.File) -> list[str]:
    """The file's group names in the order they were first written (files without an ``order``
    attribute: HDF5's, alphabetical)."""
    return json.loads(f.attrs["order"]) if "order" in f.attrs else list(f)


def _write_group(g: h5py.Group, r: EigsRecord) -> None:
    g.attrs.update(checkpoint=r.checkpoint, options=json.dumps(r.options), num_parameters=r.num_parameters)
    if r.optimizer is not None:
        g.attrs["optimizer"] = r.optimizer
    if r.graphs is not None:
        g.attrs["graphs"] = json.dumps(r.graphs)
    g.create_dataset("param_names", data=np.array(r.param_names, dtype=h5py.string_dtype()))
    if r.spectrum is not None:
        s = r.spectrum
        g.create_dataset("eigenvalues", data=s.eigenvalues)
        g.create_dataset("residuals", data=s.residuals)
        g["eigenvalues"].attrs.update(hvps=s.num_products, seconds=s.seconds, converged=s.converged,
                                      which=s.which, tol=s.tol)
        if s.eigenvectors is not None:
            g.create_dataset("eigenvectors", data=s.eigenvectors.detach().cpu().float().numpy())
    if r.state is not None:
        _create_state(g, r.state)
    if r.trace is not None:
        g.create_group("trace").attrs.update(value=r.trace.value, stderr=r.trace.stderr, hvps=r.trace.num_products,
                                             seconds=r.trace.seconds, method=r.trace.method)
    if r.density is not None:
        d = g.create_group("density")
        for key in ("nodes", "weights", "grid", "density"):
            d.create_dataset(key, data=getattr(r.density, key))
        d.attrs.update(sigma=r.density.sigma, hvps=r.density.num_products, seconds=r.density.seconds)


def read_records(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, EigsRecord]:
    """Every group of ``path`` by checkpoint, in the order written (an unfinished Lanczos state is
    put on ``device``)."""
    with _open_eigs(path) as f:
        return {f[name].attrs["checkpoint"]: _read_group(f[name], device) for name in _group_order(f)}


def _read_group(g: h5py.Group, device: torch.device | str) -> EigsRecord:
    record = EigsRecord(str(g.attrs["checkpoint"]), json.loads(g.attrs["options"]),
                        [n.decode() if isinstance(n, bytes) else n for n in g["param_names"][()]],
                        int(g.attrs["num_parameters"]))
    if "optimizer" in g.attrs:
        record.optimizer = str(g.attrs["optimizer"])
    if "graphs" in g.attrs:
        record.graphs = json.loads(g.attrs["graphs"])
    if "eigenvalues" in g:
        a = g["eigenvalues"].attrs
        record.spectrum = Spectrum(g["eigenvalues"][()], g["residuals"][()], None, int(a["hvps"]),
                                   float(a["seconds"]), bool(a["converged"]), str(a["which"]), float(a["tol"]))
    if "lanczos_state" in g:
        s = g["lanczos_state"]
        steps = int(s.attrs["steps"])  # the committed products: later rows may be half-written
        coeffs = np.ascontiguousarray(s["coeffs"][:steps, : steps + 1].T)
        record.state = SavedLanczos(torch.from_numpy(s["basis"][: steps + 1]).to(device), torch.from_numpy(coeffs),
                                    int(s.attrs["restarts"]), int(s.attrs["seed"]), float(s.attrs["seconds"]),
                                    limit=s["basis"].shape[0] - 1)
    if "trace" in g:
        a = g["trace"].attrs
        record.trace = TraceEstimate(float(a["value"]), float(a["stderr"]), int(a["hvps"]), float(a["seconds"]),
                                     str(a["method"]))
    if "density" in g:
        d = g["density"]
        record.density = SpectralDensity(*(d[key][()] for key in ("nodes", "weights", "grid", "density")),
                                         float(d.attrs["sigma"]), int(d.attrs["hvps"]), float(d.attrs["seconds"]))
    return record


def read_eigenvectors(path: str | os.PathLike, group: Optional[str] = None) -> tuple[list[str], torch.Tensor]:
    """(parameter names in order, eigenvectors (k, P) float32) stored by ``eigs --save-vectors``.

    group: the checkpoint path (or the group name); may be omitted when the file holds one
    checkpoint. Row i is the eigenvector of the i-th stored eigenvalue, flattened over the named
    parameters in order (each parameter's entries in ``tensor.reshape(-1)`` order).
    """
    with _open_eigs(path) as f:
        names = list(f)
        if group is None:
            if len(names) != 1:
                raise UserError(f"{path} holds {len(names)} checkpoints; say which one "
                                f"({', '.join(f[n].attrs['checkpoint'] for n in names)}).")
            chosen = names[0]
        else:
            chosen = group if group in f else group_name(group)
            if chosen not in f:
                raise UserError(f"{path}: no results for {group}.")
        g = f[chosen]
        if "eigenvectors" not in g:
            raise UserError(f"{path}: no eigenvectors for {g.attrs['checkpoint']}; rerun eigs with --save-vectors.")
        param_names = [n.decode() if isinstance(n, bytes) else n for n in g["param_names"][()]]
        return param_names, torch.from_numpy(g["eigenvectors"][()])


def eigenvectors_of(path: str | os.PathLike, checkpoint: Optional[str] = None) -> tuple[list[str], torch.Tensor]:
    """:func:`read_eigenvectors` of ``checkpoint``, or of the file's only checkpoint when the file
    holds none under that path (e.g. eigenvectors computed for a copy of the checkpoint)."""
    try:
        return read_eigenvectors(path, checkpoint)
    except UserError:
        if checkpoint is None:
            raise
        return read_eigenvectors(path, None)


def _open_eigs(path: str | os.PathLike) -> contextlib.AbstractContextManager[h5py.File]:
    """``open_h5`` for eigs result files only."""
    return open_h5(path, KIND, "eigs")
