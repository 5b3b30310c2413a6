"""``alignsam-diag sweep``: a grid of ``train`` runs from a TOML spec and/or ``--set KEY=V1,V2,...``,
resumable, summarised in ``<out>/sweep.h5`` (Figure 2 and Table 9 read it).

The options fixed for every run are train's flags (``--dataset``, ``--epochs``, ``--lam``...); each
one given replaces the spec's ``[base]`` entry, one left out keeps the spec's value or train's
default. Names and types come from the library (:mod:`alignsam_diag.sweep`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from alignsam_diag.optim.variants import OPTIMIZERS

from .common import (ARCH_NAMES, DATASET_NAMES, ArchKwargs, DataRoot, Device, Json, Quiet, parse_json_object,
                     print_json, progress_display, resolve_device)
from .train import STORED_AS, with_hyper_options

if TYPE_CHECKING:
    from alignsam_diag.store.sweep import SweepRecord
    from alignsam_diag.sweep import SweepResult

Opt = typer.Option


def base_options(given: dict[str, Any]) -> dict[str, Any]:
    """The run options the command line fixes, by dotted name: the flags given (not None), as
    ``train`` stores them (``--seed`` sets the training and the data seed, like train's)."""
    stored_as = {**STORED_AS, "epochs": "epochs"}  # train keeps --epochs out of STORED_AS: resume may extend it
    options = {stored_as[name]: value for name, value in given.items() if value is not None and name != "arch_kwargs"}
    if "seed" in options:
        options["data.seed"] = options["seed"]
    kwargs = parse_json_object(given.get("arch_kwargs"), "--arch-kwargs")
    options.update({f"arch_kwargs.{name}": value for name, value in kwargs.items()})
    return options


def runs_table(result: SweepResult) -> str:
    """One row per run of the summary: name, status, epochs, test accuracy, time per epoch and total."""
    def row(r: SweepRecord) -> list[str]:
        state = "skipped (finished before)" if r.name in result.skipped else r.status
        return [r.name, state, str(r.epochs), f"{100 * r.test_acc:.2f}", f"{r.epoch_seconds:.3g}",
                f"{r.total_seconds:.3g}"]

    header = ["run", "status", "epochs", "test acc (%)", "s/epoch", "total s"]
    from alignsam_diag.plots.tables import aligned

    return aligned([header] + [row(r) for r in result.summary.records])


def run_json(r: SweepRecord) -> dict[str, Any]:
    """A run of the summary for ``--json`` (a diverged run's metrics as null)."""
    metrics = {k: getattr(r, k) for k in ("test_acc", "test_loss", "train_acc", "train_loss", "epoch_seconds",
                                          "total_seconds")}
    return {"name": r.name, "values": r.values, "status": r.status, "epochs": r.epochs, "run_dir": r.run_dir,
            **{k: v if math.isfinite(v) else None for k, v in metrics.items()}}


@with_hyper_options
def sweep(
    spec: Annotated[Optional[Path], typer.Argument(
        help="TOML spec: a table named base (options fixed for every run) and one or more tables named grid "
             "(options to vary, each a list of values; every combination is a run, the grids' runs are joined). "
             "Option names are train's settings as stored: lr, epochs, seed, optimizer, aux_batch_size, hyper.lam, data.subset, "
             "arch_kwargs.width...", show_default=False)] = None,
    sets: Annotated[Optional[list[str]], Opt(
        "--set", help="KEY=V1,V2,...: vary option KEY over these values (repeatable; each --set multiplies the "
                      "runs, e.g. --set hyper.lam=0.5,1,2 --set seed=0,1,2 is 9 runs). With a spec it replaces "
                      "KEY in every grid.", show_default=False)] = None,
    out: Annotated[Path, Opt("--out", help="Sweep folder: each run trains into OUT/runs/<name> (named by its "
                                           "swept values), the summary goes to OUT/sweep.h5. A rerun skips "
                                           "finished runs and resumes interrupted ones.")] = Path("checkpoints/sweep"),
    dataset: Annotated[Optional[str], Opt("--dataset", help=DATASET_NAMES, show_default=False)] = None,
    data_root: DataRoot = None,
    download: Annotated[bool, Opt("--download", help="Download CIFAR if it is not under --data-root.")] = False,
    arch: Annotated[Optional[str], Opt("--arch", "--model", help=ARCH_NAMES, show_default=False)] = None,
    arch_kwargs: ArchKwargs = None,
    optimizer: Annotated[Optional[str], Opt("--optimizer", help=" | ".join(OPTIMIZERS.names()),
                                            show_default=False)] = None,
    base: Annotated[Optional[str], Opt("--base", help="Base optimizer: sgd | adamw.", show_default=False)] = None,
    epochs: Annotated[Optional[int], Opt("--epochs", show_default=False)] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", help="Train batch size |B^t|.",
                                             show_default=False)] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="Peak learning rate.", show_default=False)] = None,
    momentum: Annotated[Optional[float], Opt("--momentum", show_default=False)] = None,
    weight_decay: Annotated[Optional[float], Opt("--weight-decay", show_default=False)] = None,
    warmup_epochs: Annotated[Optional[float], Opt("--warmup-epochs", show_default=False)] = None,
    aux_batch_size: Annotated[Optional[int], Opt("--aux-batch-size", help="|B^a| of the variants with an auxiliary "
                                                 "batch (train's default: |B^t|/4).", show_default=False)] = None,
    augment: Annotated[Optional[bool], Opt("--augment/--no-augment", help="The paper's CIFAR augmentation.",
                                           show_default=False)] = None,
    label_noise: Annotated[Optional[float], Opt("--label-noise", show_default=False)] = None,
    subset: Annotated[Optional[int], Opt("--subset", help="Train on a seeded subset of N samples.",
                                         show_default=False)] = None,
    seed: Annotated[Optional[int], Opt("--seed", help="Seed of training and of the data subset, as train's; vary "
                                       "the training seed with --set seed=0,1,2 for mean ± std.",
                                       show_default=False)] = None,
    amp: Annotated[Optional[str], Opt("--amp", help="bf16 autocast.", show_default=False)] = None,
    device: Device = "auto",
    json_out: Json = False,
    quiet: Quiet = False,
    **hyper: Any,
) -> None:
    """Train every run of a grid (one overall progress bar) into OUT/runs/ and write the summary
    OUT/sweep.h5 after each run; `figures lambda` and `figures aux-batch` read it. The train flags
    fix an option for every run: one given replaces the spec's base entry, one left out keeps it
    (else train's default)."""
    from alignsam_diag.sweep import build_spec, run_sweep

    given = dict(dataset=dataset, data_root=data_root, arch=arch, arch_kwargs=arch_kwargs, optimizer=optimizer,
                 base=base, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                 warmup_epochs=warmup_epochs, aux_batch_size=aux_batch_size, augment=augment,
                 label_noise=label_noise, subset=subset, seed=seed, amp=amp, **hyper)
    plan = build_spec(spec, sets or [], base_options(given), base_source="a flag of the command line")
    target = resolve_device(device)
    with progress_display(quiet) as progress:
        result = run_sweep(plan, out, target, progress=progress, download=download)
    if json_out:
        print_json({"summary": str(result.summary_path), "trained": result.trained, "skipped": result.skipped,
                    "runs": [run_json(r) for r in result.summary.records]})
    else:
        typer.echo(runs_table(result))
        typer.echo(f"summary: {result.summary_path}")
