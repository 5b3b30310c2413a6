"""The ``eigs`` analysis of one model: top-k eigenvalues, optionally trace and spectral density,
of the Hessian or of the generalised Gauss-Newton matrix (``curvature``, :mod:`.ggn`), stored in
an eigs HDF5 file part by part so that an interrupted run continues where it stopped.

The Lanczos state is saved after every product (in place, only the new basis row: see
:func:`alignsam_diag.store.spectrum.save_state`); the spectrum, the trace and the density are
written when each is done. A rerun with the same options computes only what the file does not
hold yet; a rerun with other options is refused (results made with different settings are never
mixed). Products keep every batch's first-order graph when the measured estimate of those
graphs fits in the memory budget (:meth:`.curvature.HessianOperator.plan_graphs`), whatever
the number of samples; how they were made is stored with the results but is no option of
them, so a rerun in another mode continues the same results.

Under ``torchrun`` each rank applies the operator to its block of the samples and the products
are summed over the ranks (``sharded`` :class:`.curvature.HessianOperator`), so every rank gets
the same products; Lanczos, the trace estimate and the density then run replicated on every
rank, from the same seeded start and probe vectors, and give every rank the same results. Rank
0 alone locks and writes ``out``: it reads what an earlier run left there and hands it (the
Lanczos state included) to the other ranks before any product, and every save ends with all
ranks learning whether it worked (:func:`~alignsam_diag.distributed.on_main_rank`).
``--backend pyhessian`` runs in one process only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..distributed import main_rank_lock, on_every_rank, on_main_rank
from ..errors import OptionError, UserError
from ..memory import Budget, budget_bytes
from ..progress import ProgressFn
from ..store.spectrum import EigsRecord, eigenvectors_of, read_records, save_state, write_record
from .curvature import Batch, GraphPlan, HessianOperator
from .density import spectral_density
from .ggn import CURVATURES
from .lanczos import LanczosState, check_options, lanczos, warm_start
from .pyhessian_backend import pyhessian_eigenvalues
from .trace import TRACE_METHODS

BACKENDS = ("ours", "pyhessian")
SPEED_ONLY = ("keep_graph", "memory_budget")  # options that change how products are made, not the results


@dataclass
class EigsOptions:
    """Settings of one eigs analysis (the Lanczos ones are described in :func:`.lanczos.lanczos`).

    params: parameter-name patterns (None: all). curvature: "hessian" or "ggn" (the generalised
    Gauss-Newton matrix, :class:`.ggn.GaussNewtonOperator`). backend: "ours" or "pyhessian" (its
    power iteration of the Hessian; no parameter subsets, not resumable). trace: "hutch++", "hutchinson" or None.
    density: SLQ with ``density_runs`` runs of ``density_steps`` products. start_vectors: an eigs
    file with eigenvectors (``--save-vectors``) of the same parameters, e.g. of a subsample's
    Hessian, whose sum starts Lanczos (see :func:`.lanczos.warm_start`). keep_graph: force the
    kept-graph mode (True) or the data-set mode (False); None: kept graphs when their measured
    estimate fits in ``memory_budget`` (bytes, "8GiB", "50%"; None: half the free memory of the
    model's device). See :meth:`.curvature.HessianOperator.plan_graphs`. Both are speed and
    memory only, so not part of the stored options.
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
    keep_graph: Optional[bool] = None
    memory_budget: Budget = None
    curvature: str = "hessian"

    def validate(self) -> None:
        """Raise a one-line :class:`UserError` for the first invalid option."""
        check_options(self.k, self.which, self.tol, self.max_iter)
        budget_bytes(self.memory_budget)
        if self.backend not in BACKENDS:
            raise OptionError("backend", self.backend, "choose ours or pyhessian.")
        if self.backend == "pyhessian" and (self.params or self.which != "LM"):
            raise UserError("--backend pyhessian computes largest-magnitude eigenvalues of all parameters: "
                            "drop --params and --which.")
        if self.curvature not in CURVATURES:
            raise OptionError("curvature", self.curvature, f"choose {' or '.join(CURVATURES)}.")
        if self.backend == "pyhessian" and self.curvature != "hessian":
            raise UserError("--backend pyhessian computes Hessian eigenvalues only: drop --curvature ggn.")
        if self.backend == "pyhessian" and self.start_vectors:
            raise UserError("--start-vectors starts our Lanczos; it does not apply to --backend pyhessian.")
        if self.trace is not None and self.trace not in TRACE_METHODS:
            raise OptionError("trace", self.trace, f"choose {' or '.join(TRACE_METHODS)}.")

    def stored(self) -> dict[str, Any]:
        """The options that determine the results (stored with them, compared on reruns)."""
        return {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}


def _lanczos_start(record: EigsRecord, options: EigsOptions, op: HessianOperator,
                   checkpoint: str) -> Optional[torch.Tensor]:
    """Before any product: check that our Lanczos run, if one is still to do, can start (options
    against the operator's size, memory for a fresh basis), and return its start vector (P,)
    from --start-vectors (None: a seeded random one, or the run resumes)."""
    if record.spectrum is not None or options.backend != "ours":
        return None
    fresh = record.state is None
    check_options(options.k, options.which, options.tol, options.max_iter, op.shape[0], op.device if fresh else None)
    return _start_vector(options.start_vectors, checkpoint, op.param_names) if fresh and options.start_vectors else None


def _needs_products(record: EigsRecord, options: EigsOptions) -> bool:
    """Whether a part still to compute uses our Hessian-vector products."""
    return ((record.spectrum is None and options.backend == "ours")
            or (options.trace is not None and record.trace is None) or (options.density and record.density is None))


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _start_vector(path: str, checkpoint: str, param_names: list[str]) -> torch.Tensor:
    """The warm start (P,) from the eigenvectors stored in ``path`` for ``checkpoint`` (or for the
    file's only checkpoint), which must be over the same parameters as this run."""
    names, vectors = eigenvectors_of(path, checkpoint)
    if names != param_names:
        raise OptionError("start_vectors", path, f"its eigenvectors are over {len(names)} parameter tensors, "
                          f"this run's over {len(param_names)} (or in another order); use an eigs file of the "
                          "same architecture and {params}.", mentions=("params",))
    return warm_start(vectors)


def analyse(checkpoint: str | os.PathLike, model: nn.Module, batches: Sequence[Batch], options: EigsOptions,
            data: dict[str, Any], out: Optional[str | os.PathLike] = None, check_determinism: bool = False,
            progress: Optional[ProgressFn] = None, optimizer: Optional[str] = None,
            on_plan: Optional[Callable[[GraphPlan], None]] = None) -> EigsRecord:
    """Run the eigs analysis of ``model`` (cross-entropy, mean over ``batches``) and return it.

    data: how the samples were chosen (split, sample count, seed, data set); stored with the options.
    out: eigs HDF5 file; finished parts found there (made with the same options) are reused and
    every part is written there as soon as it is done. It is locked while the analysis runs (a
    second writer is refused; see :func:`alignsam_diag.files.output_lock`). Under ``torchrun``
    every rank calls this with the same arguments (the same ``batches``: each uses its share);
    rank 0 alone reads, locks and writes ``out``, and every rank returns the same record.
    optimizer: the optimizer name the checkpoint records, stored with a new record.
    on_plan: told how the products will be made, before the first one (not called when the
    file holds every part already); the plan is also the record's ``graphs``.
    """
    options.validate()
    if distributed.current().distributed and options.backend == "pyhessian":
        raise OptionError("backend", options.backend, "PyHessian runs in one process; start it without torchrun.")
    lock = contextlib.nullcontext() if out is None else main_rank_lock(out)
    with distributed.collectives("computing eigenvalues"), lock:
        return _analyse(checkpoint, model, batches, options, data, out, check_determinism, progress, optimizer,
                        on_plan)


def _stored_record(out: Optional[str | os.PathLike], checkpoint: str | os.PathLike) -> Optional[EigsRecord]:
    """What ``out`` holds for ``checkpoint`` (a Lanczos state on the CPU), None if nothing."""
    if out is None or not Path(out).exists():
        return None
    found = read_records(out).get(str(checkpoint))
    if found is not None:
        found.options = {"curvature": "hessian", **found.options}  # files from before --curvature hold Hessians
    return found


def _analyse(checkpoint: str | os.PathLike, model: nn.Module, batches: Sequence[Batch], options: EigsOptions,
             data: dict[str, Any], out: Optional[str | os.PathLike], check_determinism: bool,
             progress: Optional[ProgressFn], optimizer: Optional[str],
             on_plan: Optional[Callable[[GraphPlan], None]]) -> EigsRecord:
    """:func:`analyse` once ``out`` (if any) is locked."""
    wanted = {**options.stored(), **data}
    device = next(model.parameters()).device  # where a saved Lanczos basis goes
    found = on_main_rank(lambda: _stored_record(out, checkpoint))
    if found is not None and found.state is not None:
        found.state = replace(found.state, basis=found.state.basis.to(device))
    if found is not None and found.options != wanted:
        raise UserError(f"{out} already holds results for {checkpoint} made with other settings "
                        f"({', '.join(_differences(found.options, wanted))}); choose another --out or delete it.")
    with CURVATURES[options.curvature](model, F.cross_entropy, batches, options.params, progress=progress,
                                       sharded=True) as op:
        record = found or EigsRecord(str(checkpoint), wanted, op.param_names, op.shape[0], optimizer=optimizer)

        def save_progress(state: LanczosState) -> None:
            record.state = state.saved()
            on_main_rank(lambda: save_state(out, record))

        def save() -> None:
            record.state = None
            if out is not None:
                on_main_rank(lambda: write_record(out, record))

        if check_determinism:
            op.check_determinism(seed=options.seed)
        start = on_every_rank(lambda: _lanczos_start(record, options, op, str(checkpoint)))
        if _needs_products(record, options):
            plan = op.plan_graphs(options.memory_budget, options.keep_graph)
            record.graphs = plan.as_dict()
            if on_plan is not None:
                on_plan(plan)
        if record.spectrum is None:
            if options.backend == "pyhessian":
                record.spectrum = pyhessian_eigenvalues(model, F.cross_entropy, batches, options.k, options.tol,
                                                        options.max_iter, options.seed)
            else:
                record.spectrum = lanczos(op, options.k, options.which, options.tol, options.max_iter, options.seed,
                                          start=start,
                                          state=record.state,
                                          on_step=save_progress if out is not None else None,
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
