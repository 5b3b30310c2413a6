"""``alignsam-diag cosine``: gradient alignment around one optimizer step (the paper's appendix A.3,
Figure 1) at every checkpoint of a run, averaged over seeded (B^t, B^a) pairs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .common import (Arch, ArchKwargs, DataRoot, Dataset, Device, Json, NumClasses, Quiet, Trust,
                     load_analysis_inputs, print_json, progress_display, resolve_device)

if TYPE_CHECKING:
    from alignsam_diag.store.alignment import CosineRecord

Opt = typer.Option
SHOWN = ("cosine_b", "cosine_a", "change")


def as_json(r: CosineRecord) -> dict[str, Any]:
    """Per checkpoint: where it is, how it was measured, and each quantity's mean and std over the pairs."""
    from alignsam_diag.store.alignment import QUANTITIES

    out: dict[str, Any] = {"checkpoint": r.checkpoint, "epoch": r.epoch, "step": r.step, "run_optimizer": r.optimizer,
                           **{k: r.settings[k] for k in ("optimizer", "rho", "lr", "batch_size", "aux_batch_size",
                                                         "pairs", "seed")},
                           "hyper": r.settings["hyper"], "passes": r.passes, "seconds": r.seconds}
    for name in QUANTITIES:
        out[name], out[f"{name}_std"] = r.mean(name), r.std(name)
    return out


def table(records: list[CosineRecord]) -> str:
    """One row per checkpoint: epoch, the optimizer whose step is measured, its lr, and cosine_b,
    cosine_a, change as mean ± std over the pairs."""
    header = ["checkpoint", "epoch", "step of", "lr", *SHOWN]
    rows = [[r.checkpoint, "-" if r.epoch is None else str(r.epoch), r.settings["optimizer"], f"{r.settings['lr']:.4g}",
             *(f"{r.mean(q):+.4f} ± {r.std(q):.4f}" for q in SHOWN)] for r in records]
    from alignsam_diag.plots.tables import aligned

    return aligned([header] + rows)


def cosine(
    paths: Annotated[list[Path], typer.Argument(help="Run folders (their epoch_NNN.pt in epoch order, or last.pt "
                                                     "when it is the only one) or checkpoint files.")],
    pairs: Annotated[int, Opt("--pairs", help="Seeded (B^t, B^a) draws per checkpoint; the mean and std are "
                                              "over them.")] = 8,
    seed: Annotated[int, Opt("--seed", help="Seed of the batch draws (the same pairs at every checkpoint).")] = 0,
    optimizer: Annotated[Optional[str], Opt("--optimizer", show_default=False,
                                            help="Measure this variant's step instead of the recorded one (e.g. "
                                                 "align-sam for a SAM run); it takes the recorded --rho and base "
                                                 "state. Default: the checkpoint's (sam for a file without one).")
                         ] = None,
    rho: Annotated[Optional[float], Opt("--rho", show_default=False,
                                        help="ρ of the step and of θ̃^a = θ + ρ g_a/‖g_a‖, in the ball of the "
                                             "optimizer (ASAM's for asam, align-asam); default: the recorded ρ, "
                                             "0.05 for SGD.")] = None,
    lam: Annotated[Optional[float], Opt("--lam", show_default=False, help="λ of an Align-SAM step (default: the "
                                                                          "recorded one, else 2).")] = None,
    lr: Annotated[Optional[float], Opt("--lr", show_default=False,
                                       help="Learning rate of the step (default: the run's at the checkpoint, i.e. of "
                                            "its next step — 0 at the end of the cosine schedule, where θ does not "
                                            "move; 0.1 for a file without optimizer state).")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", show_default=False,
                                             help="|B^t| (default: the run's; 128 for a file without one).")] = None,
    aux_batch_size: Annotated[Optional[int], Opt("--aux-batch-size", show_default=False,
                                                 help="|B^a| (default: the run's; for a run without one, a quarter of "
                                                      "its |B^t|).")] = None,
    dataset: Dataset = None,
    data_root: DataRoot = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    num_classes: NumClasses = None,
    trust_checkpoint: Trust = False,
    device: Device = "auto",
    out: Annotated[Optional[Path], Opt("--out", help="Cosine HDF5 file (for 'figures cosine'), written after every "
                                                     "checkpoint: a rerun computes only the missing ones.")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """cosine_b = cos(∇L_{B^t}(θ), ∇L_{B^a}(θ̃^a)) before the checkpoint's next optimizer step,
    cosine_a the same after it, and change = (cosine_a − cosine_b)/cosine_a, at every checkpoint,
    printed as mean ± std over --pairs seeded pairs of training batches."""
    from alignsam_diag.analysis.alignment import CosineOptions, analyse_checkpoint, checkpoint_files
    from alignsam_diag.distributed import main_rank_lock

    options = CosineOptions(pairs, seed, optimizer, rho, lam, lr, batch_size, aux_batch_size)
    options.validate()
    files = [f for path in paths for f in checkpoint_files(path)]
    target = resolve_device(device)
    records = []
    with contextlib.nullcontext() if out is None else main_rank_lock(out), progress_display(quiet) as progress:
        for checkpoint in files:
            inputs = load_analysis_inputs(checkpoint, dataset=dataset, data_root=data_root, arch=arch,
                                          arch_kwargs=arch_kwargs, num_classes=num_classes, trust=trust_checkpoint,
                                          split="train", samples=1, full=True, seed=seed, batch_size=1 << 20,
                                          device=target)
            records.append(analyse_checkpoint(checkpoint, inputs.checkpoint, inputs.data, inputs.splits.augment,
                                              options, out, progress))
    if json_out:
        print_json([as_json(r) for r in records])
    else:
        typer.echo(table(records))
