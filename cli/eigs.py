"""``alignsam-diag eigs``: top-k Hessian eigenvalues (Lanczos), optionally trace and spectral
density, of one or more checkpoints; the paper's Table 10 layout or JSON."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from alignsam_diag.errors import UserError

from .common import (Arch, ArchKwargs, BatchSize, Checkpoints, DataRoot, Dataset, Device, Full, Json, NumClasses,
                     Quiet, Samples, Seed, Split, Trust, is_main_rank, load_analysis_inputs, print_json,
                     progress_display, resolve_device)

if TYPE_CHECKING:
    from alignsam_diag.analysis.curvature import GraphPlan
    from alignsam_diag.store.spectrum import EigsRecord

Opt = typer.Option


def say_plan(plan: GraphPlan) -> None:
    """One line on stderr: how the products are made and why (the kept graphs' estimate)."""
    typer.echo(f"eigs: {plan.describe()}", err=True)


def as_json(r: EigsRecord) -> dict[str, Any]:
    s = r.spectrum
    out: dict[str, Any] = {
        "checkpoint": r.checkpoint, "eigenvalues": s.eigenvalues.tolist(), "residuals": s.residuals.tolist(),
        "hvps": s.num_products, "seconds": s.seconds, "converged": s.converged, "which": s.which, "tol": s.tol,
        "num_parameters": r.num_parameters, "samples": r.options["samples"], "graphs": r.graphs,
        "curvature": r.options.get("curvature", "hessian"),
    }
    if r.trace is not None:
        out["trace"] = {"value": r.trace.value, "stderr": r.trace.stderr, "hvps": r.trace.num_products,
                        "seconds": r.trace.seconds, "method": r.trace.method}
    if r.density is not None:
        mean, square = r.density.moments()
        out["density"] = {"mean": mean, "second_moment": square, "sigma": r.density.sigma,
                          "hvps": r.density.num_products, "seconds": r.density.seconds}
    return out


def eigs(
    checkpoints: Checkpoints,
    k: Annotated[int, Opt("--k", help="Number of eigenvalues.")] = 5,
    which: Annotated[str, Opt("--which", help="LM (largest magnitude, as Table 10; negative values can appear) "
                                              "| LA (largest) | SA (smallest).")] = "LM",
    tol: Annotated[float, Opt("--tol", help="Stop when every pair has ‖Hv − λv‖ ≤ tol·|λ_max|.")] = 1e-3,
    max_iter: Annotated[int, Opt("--max-iter", help="At most this many Hessian-vector products.")] = 100,
    samples: Samples = 4096,
    full: Full = False,
    split: Split = "train",
    batch_size: BatchSize = 512,
    seed: Seed = 0,
    params: Annotated[Optional[list[str]], Opt("--params", help="Only parameters whose names match this "
                                               "pattern (fnmatch, e.g. 'layer3.*'); repeatable.")] = None,
    keep_graph: Annotated[Optional[bool], Opt(
        "--keep-graph/--no-keep-graph", show_default=False,
        help="Keep every batch's first-order graph (about 2× faster products, memory for all samples' graphs) "
             "or rebuild them for every product (default: keep them when their measured size fits in "
             "--memory-budget, with --full too).")] = None,
    memory_budget: Annotated[Optional[str], Opt(
        "--memory-budget", show_default=False,
        help="Memory the kept graphs may take: a size (8GiB, 512MB) or a share of the free memory (50%); "
             "default: half the free memory of the device.")] = None,
    check_determinism: Annotated[bool, Opt("--check-determinism", help="Stop if two passes over the samples "
                                                                        "differ (dropout, noise...).")] = False,
    trace: Annotated[bool, Opt("--trace", help="Also estimate tr(H) with a standard error.")] = False,
    trace_method: Annotated[str, Opt("--trace-method", help="hutch++ | hutchinson")] = "hutch++",
    trace_probes: Annotated[int, Opt("--trace-probes", help="Products spent on the trace.")] = 99,
    density: Annotated[bool, Opt("--density", help="Also the spectral density (SLQ); plot it with "
                                                   "'figures density'.")] = False,
    density_steps: Annotated[int, Opt("--density-steps", help="Lanczos steps per SLQ run.")] = 80,
    density_runs: Annotated[int, Opt("--density-runs", help="SLQ runs (random start vectors).")] = 4,
    save_vectors: Annotated[bool, Opt("--save-vectors", help="Store the eigenvectors in --out.")] = False,
    start_vectors: Annotated[Optional[Path], Opt(
        "--start-vectors", help="Start Lanczos from the eigenvectors in this eigs file (--save-vectors), e.g. of "
                                "--samples 4096: fewer products with --full.")] = None,
    curvature: Annotated[str, Opt("--curvature", help="hessian | ggn (the generalised Gauss-Newton matrix "
                                                      "JᵀH_ℓJ: positive semi-definite, products without a second "
                                                      "backward).")] = "hessian",
    backend: Annotated[str, Opt("--backend", help="ours | pyhessian (PyHessian's power iteration, "
                                                  "for comparison with published values).")] = "ours",
    dataset: Dataset = None,
    data_root: DataRoot = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    num_classes: NumClasses = None,
    trust_checkpoint: Trust = False,
    device: Device = "auto",
    out: Annotated[Optional[Path], Opt("--out", help="Eigs HDF5 file. Written after every product: rerun the "
                                                     "same command to continue an interrupted run. One run at a "
                                                     "time may write it.")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Top-k Hessian eigenvalues of the mean loss on fixed samples (default: 4096 seeded training
    samples), printed as the paper's Table 10 (λ1, λ1/λ2 … λ1/λk), one row per checkpoint.
    Under torchrun each rank computes the products on its share of the samples."""
    from alignsam_diag import distributed
    from alignsam_diag.analysis.spectrum import EigsOptions, analyse
    from alignsam_diag.distributed import main_rank_lock

    options = EigsOptions(k, which, tol, max_iter, seed, params, backend, save_vectors,
                          trace_method if trace else None, trace_probes, density, density_steps, density_runs,
                          str(start_vectors) if start_vectors else None, keep_graph=keep_graph,
                          memory_budget=memory_budget, curvature=curvature)
    options.validate()
    if (save_vectors or density) and out is None:
        raise UserError("--save-vectors and --density store their results: give --out FILE.h5.")
    target = resolve_device(device)
    records = []
    lock = contextlib.nullcontext() if out is None else main_rank_lock(out)
    with distributed.collectives("computing eigenvalues"), lock, progress_display(quiet) as progress:
        for checkpoint in checkpoints:
            inputs = load_analysis_inputs(checkpoint, dataset=dataset, data_root=data_root, arch=arch,
                                          arch_kwargs=arch_kwargs, num_classes=num_classes, trust=trust_checkpoint,
                                          split=split, samples=samples, full=full, seed=seed,
                                          batch_size=batch_size, device=target)
            data = {"split": split, "samples": len(inputs.data), "dataset": dataset or "from checkpoint"}
            records.append(analyse(checkpoint, inputs.checkpoint.model, inputs.batches, options, data, out,
                                   check_determinism, progress, inputs.checkpoint.optimizer,
                                   on_plan=None if quiet or not is_main_rank() else say_plan))
    if json_out:
        print_json([as_json(r) for r in records])
    else:
        from alignsam_diag.plots.spectrum_table import table10
        from alignsam_diag.plots.tables import to_text

        typer.echo(to_text(table10(records)))
