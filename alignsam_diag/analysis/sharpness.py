"""The ``sharpness`` analysis: worst-case and average-case sharpness (standard or adaptive, ℓ2 or
ℓ∞, m-sharpness) of a model at one or more radii, optionally with λ_max and tr(H) on the same
samples, stored row by row in a sharpness HDF5 file so that an interrupted run continues.

The measures themselves are library functions taking the model, fixed batches and
:class:`SharpnessOptions`: :func:`.sharpness_worst.worst_case_sharpness` and
:func:`.sharpness_average.average_case_sharpness` (:func:`measure_sharpness` picks one by name).
A file holds results made with one set of settings (:meth:`SharpnessOptions.stored` and the
samples); its rows are keyed by (checkpoint, measure, norm, adaptive, ρ, m), so a rerun with
more radii, another norm or m adds rows, and a rerun with the same computes nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.nn.functional as F
from torch import nn

from ..errors import OptionError, UserError
from ..files import output_lock
from ..progress import ProgressFn
from ..store.sharpness import CheckpointEigs, SharpnessFile, SharpnessRow, read_sharpness, write_sharpness
from .curvature import Batch, LossFn
from .sharpness_average import average_case_sharpness
from .sharpness_core import MEASURES, MeasureResult, SharpnessOptions, check_rho
from .sharpness_worst import worst_case_sharpness
from .spectrum import EigsOptions
from .spectrum import analyse as analyse_eigs

EIGS = EigsOptions(k=1, which="LA", trace="hutch++")  # what --with-eigs computes (params and seed: the run's)


def measure_sharpness(model: nn.Module, batches: Sequence[Batch], measure: str, rho: float,
                      options: SharpnessOptions, loss_fn: LossFn = F.cross_entropy,
                      progress: Optional[ProgressFn] = None) -> MeasureResult:
    """The ``measure`` ("worst" or "average") of ``model`` at radius ``rho`` on ``batches``."""
    check_measures([measure])
    if measure == "worst":
        return worst_case_sharpness(model, batches, rho, options, loss_fn, progress=progress)
    return average_case_sharpness(model, batches, rho, options, loss_fn, progress=progress)


def check_measures(measures: Sequence[str]) -> None:
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise OptionError("measure", ",".join(measures), f"choose one or more of {', '.join(MEASURES)}.")


@dataclass
class SharpnessReport:
    """One checkpoint's results: ``rows`` in the order (measure, ρ) asked, read back or computed
    now (``computed`` of them); ``eigs`` when asked for."""

    rows: list[SharpnessRow]
    eigs: Optional[CheckpointEigs]
    computed: int


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _eigs(checkpoint: str, model: nn.Module, batches: Sequence[Batch], options: SharpnessOptions,
          data: dict[str, Any], progress: Optional[ProgressFn]) -> CheckpointEigs:
    """λ_max and tr(H) ± s.e. by the ``eigs`` analysis (:data:`EIGS`) on the same samples."""
    record = analyse_eigs(checkpoint, model, batches, replace(EIGS, params=options.params, seed=options.seed), data,
                          progress=progress)
    spectrum, trace = record.spectrum, record.trace
    return CheckpointEigs(checkpoint, float(spectrum.eigenvalues[0]), trace.value, trace.stderr,
                          spectrum.num_products + trace.num_products, spectrum.converged)


def analyse(checkpoint: str | os.PathLike, model: nn.Module, batches: Sequence[Batch], measures: Sequence[str],
            rhos: Sequence[float], options: SharpnessOptions, data: dict[str, Any],
            out: Optional[str | os.PathLike] = None, with_eigs: bool = False, progress: Optional[ProgressFn] = None,
            optimizer: Optional[str] = None) -> SharpnessReport:
    """Every (measure, ρ) of ``model`` (cross-entropy on ``batches``), and λ_max and tr(H) if
    ``with_eigs``.

    data: how the samples were chosen (split, samples, dataset), stored with the options.
    out: sharpness HDF5 file; rows it holds for this checkpoint (made with the same settings)
    are reused, every new row is written as soon as it is done, and the file is locked while
    the analysis runs. optimizer: the optimizer the checkpoint records, stored with its rows.
    """
    options.validate()
    check_measures(measures)
    for rho in rhos:
        check_rho(rho)
    if not rhos:
        raise OptionError("rho", "", "give at least one radius.")
    with contextlib.nullcontext() if out is None else output_lock(out):
        settings = {**options.stored(), **data}
        results = read_sharpness(out) if out is not None and Path(out).exists() else SharpnessFile(settings)
        if results.settings != settings:
            raise UserError(f"{out} holds sharpness results made with other settings "
                            f"({', '.join(_differences(results.settings, settings))}); choose another --out "
                            "or delete it.")

        def save() -> None:
            if out is not None:
                write_sharpness(out, results)

        samples = sum(len(y) for _, y in batches)
        m = min(options.m or samples, samples)
        rows, computed = [], 0
        for measure in measures:
            for rho in rhos:
                row = results.row((str(checkpoint), measure, options.norm, options.adaptive, float(rho), m))
                if row is None:
                    result = measure_sharpness(model, batches, measure, float(rho), options, progress=progress)
                    row = SharpnessRow(str(checkpoint), measure, options.norm, options.adaptive, float(rho),
                                       result.estimate, optimizer)
                    results.put(row)
                    computed += 1
                    save()
                rows.append(row)
        eigs = results.eigs_of(str(checkpoint)) if with_eigs else None
        if with_eigs and eigs is None:
            eigs = _eigs(str(checkpoint), model, batches, options, data, progress)
            results.eigs.append(eigs)
            save()
    return SharpnessReport(rows, eigs, computed)
