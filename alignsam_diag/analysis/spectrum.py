"""The ``eigs`` analysis of one model: top-k eigenvalues, optionally trace and spectral density,
stored in an eigs HDF5 file part by part so that an interrupted run continues where it stopped.

The Lanczos state is written after every product; the trace and the density are written when
each is done. A rerun with the same options computes only what the file does not hold yet; a
rerun with other options is refused (results made with different settings are never mixed).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..files import output_lock
from ..progress import ProgressFn
from ..store.spectrum import EigsRecord, eigenvectors_of, read_records, write_record
from .curvature import Batch, HessianOperator
from .density import spectral_density
from .lanczos import LanczosState, check_options, lanczos, warm_start
from .pyhessian_backend import pyhessian_eigenvalues
from .trace import TRACE_METHODS

BACKENDS = ("ours", "pyhessian")


@dataclass
class EigsOptions:
    """Settings of one eigs analysis (the Lanczos ones are described in :func:`.lanczos.lanczos`).

    params: parameter-name patterns (None: all). backend: "ours" or "pyhessian" (its power
    iteration; no parameter subsets, not resumable). trace: "hutch++", "hutchinson" or None.
    density: SLQ with ``density_runs`` runs of ``density_steps`` products. start_vectors: an eigs
    file with eigenvectors (``--save-vectors``) of the same parameters, e.g. of a subsample's
    Hessian, whose sum starts Lanczos (see :func:`.lanczos.warm_start`). keep_graph: see
    :class:`.curvature.HessianOperator` (speed and memory only, so not part of the stored options).
    """

    k: int = 5
    which: str = "LM"
    tol: float = 1e-3
    max_iter: int = 100
    seed: int = 0
    params: Optional[list[str]] = None
    backend: str = "ours"
    save_vectors: bool = False
    trace: Optional[str] = None
    trace_probes: int = 99
    density: bool = False
    density_steps: int = 80
    density_runs: int = 4
    start_vectors: Optional[str] = None
    keep_graph: bool = True

    def validate(self) -> None:
        """Raise a one-line :class:`UserError` for the first invalid option."""
        check_options(self.k, self.which, self.tol, self.max_iter)
        if self.backend not in BACKENDS:
            raise UserError(f"--backend {self.backend}: choose ours or pyhessian.")
        if self.backend == "pyhessian" and (self.params or self.which != "LM"):
            raise UserError("--backend pyhessian computes largest-magnitude eigenvalues of all parameters: "
                            "drop --params and --which.")
        if self.backend == "pyhessian" and self.start_vectors:
            raise UserError("--start-vectors starts our Lanczos; it does not apply to --backend pyhessian.")
        if self.trace is not None and self.trace not in TRACE_METHODS:
            raise UserError(f"--trace-method {self.trace}: choose {' or '.join(TRACE_METHODS)}.")

    def stored(self) -> dict[str, Any]:
        """The options that determine the results (stored with them, compared on reruns)."""
        return {k: v for k, v in asdict(self).items() if k != "keep_graph"}


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _start_vector(path: str, checkpoint: str, param_names: list[str]) -> torch.Tensor:
    """The warm start (P,) from the eigenvectors stored in ``path`` for ``checkpoint`` (or for the
    file's only checkpoint), which must be over the same parameters as this run."""
    names, vectors = eigenvectors_of(path, checkpoint)
    if names != param_names:
        raise UserError(f"--start-vectors {path}: its eigenvectors are over {len(names)} parameter tensors, this "
                        f"run's over {len(param_names)} (or in another order); use an eigs file of the same "
                        "architecture and --params.")
    return warm_start(vectors)


def analyse(checkpoint: str | os.PathLike, model: nn.Module, batches: Sequence[Batch], options: EigsOptions,
            data: dict[str, Any], out: Optional[str | os.PathLike] = None, check_determinism: bool = False,
            progress: Optional[ProgressFn] = None, optimizer: Optional[str] = None) -> EigsRecord:
    """Run the eigs analysis of ``model`` (cross-entropy, mean over ``batches``) and return it.

    data: how the samples were chosen (split, sample count, seed, data set); stored with the options.
    out: eigs HDF5 file; finished parts found there (made with the same options) are reused and
    every part is written there as soon as it is done. It is locked while the analysis runs (a
    second writer is refused; see :func:`alignsam_diag.files.output_lock`).
    optimizer: the optimizer name the checkpoint records, stored with a new record.
    """
    options.validate()
    with contextlib.nullcontext() if out is None else output_lock(out):
        return _analyse(checkpoint, model, batches, options, data, out, check_determinism, progress, optimizer)


def _analyse(checkpoint: str | os.PathLike, model: nn.Module, batches: Sequence[Batch], options: EigsOptions,
             data: dict[str, Any], out: Optional[str | os.PathLike], check_determinism: bool,
             progress: Optional[ProgressFn], optimizer: Optional[str]) -> EigsRecord:
    """:func:`analyse` once ``out`` (if any) is locked."""
    wanted = {**options.stored(), **data}
    device = next(model.parameters()).device  # where a saved Lanczos basis goes
    found = read_records(out, device).get(str(checkpoint)) if out is not None and Path(out).exists() else None
    if found is not None and found.options != wanted:
        raise UserError(f"{out} already holds results for {checkpoint} made with other settings "
                        f"({', '.join(_differences(found.options, wanted))}); choose another --out or delete it.")
    with HessianOperator(model, F.cross_entropy, batches, options.params, keep_graph=options.keep_graph,
                         progress=progress) as op:
        record = found or EigsRecord(str(checkpoint), wanted, op.param_names, op.shape[0], optimizer=optimizer)

        def save(state: Optional[LanczosState] = None) -> None:
            record.state = state
            if out is not None:
                write_record(out, record)

        if check_determinism:
            op.check_determinism(seed=options.seed)
        if record.spectrum is None:
            if options.backend == "pyhessian":
                record.spectrum = pyhessian_eigenvalues(model, F.cross_entropy, batches, options.k, options.tol,
                                                        options.max_iter, options.seed)
            else:
                start = None
                if record.state is None and options.start_vectors:
                    start = _start_vector(options.start_vectors, str(checkpoint), op.param_names)
                record.spectrum = lanczos(op, options.k, options.which, options.tol, options.max_iter, options.seed,
                                          start=start, state=record.state, on_step=save if out is not None else None,
                                          eigenvectors=options.save_vectors, progress=progress)
            if not options.save_vectors:
                record.spectrum.eigenvectors = None
            save()
        if options.trace is not None and record.trace is None:
            record.trace = TRACE_METHODS[options.trace](op, options.trace_probes, seed=options.seed, progress=progress)
            save()
        if options.density and record.density is None:
            record.density = spectral_density(op, options.density_steps, options.density_runs, seed=options.seed,
                                              progress=progress)
            save()
    return record
