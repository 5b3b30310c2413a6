"""``alignsam-diag train``: train a model with SGD or any SAM-family optimizer; ``--resume``
continues a run with the options stored in it.

The hyper-parameter flags (``--rho``, ``--lam``, ...) are made from the optimizer registry's
descriptions (:mod:`alignsam_diag.optim.variants`, read without torch): one flag per name, its
type, and a help text that lists each variant taking it with its own meaning and default. A new
variant's flags appear here without an edit."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from alignsam_diag.optim.variants import OPTIMIZERS, Hyper, Variant, takers
from alignsam_diag.progress import ProgressFn

if TYPE_CHECKING:
    import torch

    from alignsam_diag.train import TrainConfig, TrainResult

from .common import (ARCH_NAMES, DATASET_NAMES, ArchKwargs, DataRoot, Device, Json, Quiet, parse_json_object,
                     print_json, progress_display, resolve_device)

Opt = typer.Option

#: Every hyper-parameter name of the registry, with the variants that take it.
HYPER = takers()
# Where each option is stored in a run (a TrainConfig field); with --resume a given one must match.
STORED_AS = {
    "dataset": "data.name", "data_root": "data.root", "subset": "data.subset", "label_noise": "data.label_noise",
    "augment": "data.augment", "seed": "seed", "arch": "arch", "arch_kwargs": "arch_kwargs",
    "optimizer": "optimizer", "base": "base", "batch_size": "batch_size", "aux_batch_size": "aux_batch_size",
    "lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs",
    "amp": "amp", "save_every": "save_every", "track_cosine_every": "track_cosine_every",
    "track_sharpness_every": "track_sharpness_every", "track_samples": "track_samples",
    **{name: f"hyper.{name}" for name in HYPER},
}
# Options that are not part of the stored run: runtime choices, and --epochs, which may extend it.
NOT_STORED = ("download", "device", "out", "resume", "json_out", "quiet", "epochs")


def hyper_option(name: str, described: list[tuple[Variant, Hyper]]) -> inspect.Parameter:
    """The option of hyper-parameter ``name`` (of one type in every variant that takes it): its
    flag and type, and a help text that gives each description of it with the variants that share
    it and their default."""
    first = described[0][1]
    uses: dict[tuple[str, str], list[str]] = {}
    for variant, h in described:
        uses.setdefault((h.help, h.shown_default), []).append(variant.name)
    text = "; ".join(f"{about} — {', '.join(names)}: {default}" for (about, default), names in uses.items())
    flag = f"{first.flag}/{first.off_flag}" if first.kind is bool else first.flag
    option = Opt(flag, help=text[0].upper() + text[1:] + ".", show_default=False)
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=Annotated[Optional[first.kind], option])


def with_hyper_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (which takes the hyper-parameters as ``**hyper``) with one option per name of
    :data:`HYPER` after ``--aux-batch-size`` in the signature Typer reads."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = [p.name for p in params].index("aux_batch_size") + 1
    generated = [hyper_option(name, described) for name, described in HYPER.items()]
    command.__signature__ = signature.replace(parameters=params[:at] + generated + params[at:])
    return command


@with_hyper_options
def train(
    ctx: typer.Context,
    dataset: Annotated[str, Opt("--dataset", help=DATASET_NAMES)] = "digits",
    data_root: DataRoot = None,
    download: Annotated[bool, Opt("--download", help="Download CIFAR if it is not under --data-root.")] = False,
    arch: Annotated[str, Opt("--arch", "--model", help=ARCH_NAMES)] = "cnn-small",
    arch_kwargs: ArchKwargs = None,
    optimizer: Annotated[str, Opt("--optimizer", help=" | ".join(OPTIMIZERS.names()) + " (the README says what each "
                                                     "is).")] = "sgd",
    base: Annotated[str, Opt("--base", help="Base optimizer of the SAM family: sgd | adamw.")] = "sgd",
    epochs: Annotated[int, Opt("--epochs", help="Epochs of the run; with --resume, a larger number extends it "
                                                "(left out: the stored count).")] = 10,
    batch_size: Annotated[int, Opt("--batch-size", help="Train batch size |B^t|; under torchrun the global batch "
                                                        "of all N ranks (each takes |B^t|/N; N must divide it).")] = 128,
    lr: Annotated[float, Opt("--lr", help="Peak learning rate (cosine schedule to 0).")] = 0.1,
    momentum: Annotated[float, Opt("--momentum")] = 0.9,
    weight_decay: Annotated[float, Opt("--weight-decay")] = 5e-4,
    warmup_epochs: Annotated[float, Opt("--warmup-epochs", help="Epochs of linear warm-up from 0 to --lr before the "
                                         "cosine decay (at most half the run); without it runs at lr 0.1 (SAM's "
                                         "above all) start far above chance.")] = 1.0,
    aux_batch_size: Annotated[Optional[int], Opt("--aux-batch-size", help="|B^a| of the variants with an auxiliary "
                                                 "batch (default |B^t|/4); under torchrun global, like --batch-size "
                                                 "(each rank draws |B^a|/N).", show_default=False)] = None,
    augment: Annotated[Optional[bool], Opt("--augment/--no-augment", help="The paper's CIFAR augmentation (default: on for CIFAR).", show_default=False)] = None,
    label_noise: Annotated[float, Opt("--label-noise", help="Fraction of training labels flipped (symmetric).")] = 0.0,
    subset: Annotated[Optional[int], Opt("--subset", help="Train on a seeded subset of N samples.", show_default=False)] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    device: Device = "auto",
    amp: Annotated[Optional[str], Opt("--amp", help="bf16 autocast.", show_default=False)] = None,
    out: Annotated[Path, Opt("--out", help="Run folder for checkpoints and history.h5.")] = Path("checkpoints/run"),
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --out from last.pt, with its stored options "
                                                 "(giving a different one is an error; --epochs may extend).")] = False,
    save_every: Annotated[int, Opt("--save-every", help="Also keep epoch_NNN.pt every N epochs (0: only last.pt).")] = 0,
    track_cosine_every: Annotated[int, Opt(
        "--track-cosine-every", help="Log cosine_b, cosine_a and change (the paper's Figure 1) every N steps into "
                                     "history.h5 (0: off); SGD and SAM runs draw an auxiliary batch as Align-SAM "
                                     "does, for the measurement only. Training is unchanged.")] = 0,
    track_sharpness_every: Annotated[int, Opt(
        "--track-sharpness-every", help="Log λ_max of the Hessian on --track-samples fixed training samples every N "
                                        "steps into history.h5, with the lr (0: off). Training is unchanged.")] = 0,
    track_samples: Annotated[int, Opt("--track-samples", help="Training samples (seeded by --seed) of the tracked "
                                                              "Hessian.")] = 1024,
    json_out: Json = False,
    quiet: Quiet = False,
    **hyper: Any,
) -> None:
    """Train a model; write <out>/last.pt, epoch_NNN.pt and history.h5. One run at a time may write
    a run folder. The hyper-parameter flags a variant does not take are refused; its defaults are
    in the README's optimizer table. Under torchrun --nproc_per_node N it trains data-parallel
    (each rank perturbs with its own slice's gradient; only rank 0 writes)."""
    from alignsam_diag.data import DataSpec
    from alignsam_diag.train import TrainConfig
    from alignsam_diag.train import train as run_training

    config = TrainConfig(
        data=DataSpec(dataset, data_root, subset, label_noise, seed, augment, download=download),
        arch=arch, arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"), optimizer=optimizer,
        base=base, hyper={name: value for name, value in hyper.items() if value is not None}, epochs=epochs, batch_size=batch_size, aux_batch_size=aux_batch_size,
        lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed,
        amp=amp, save_every=save_every, track_cosine_every=track_cosine_every,
        track_sharpness_every=track_sharpness_every, track_samples=track_samples)
    target = resolve_device(device)
    with progress_display(quiet) as progress:
        if resume:
            result = _resume(ctx, config, out, target, download, progress)
        else:
            result = run_training(config, out, target, progress=progress)
    if json_out:
        print_json({"run": str(result.run_dir), **result.metrics})
    else:
        m = result.metrics
        typer.echo(f"{result.run_dir}: epoch {int(m['epoch'])}  train loss {m['train_loss']:.4f}  "
                   f"acc {m['train_acc']:.2%}  test loss {m['test_loss']:.4f}  acc {m['test_acc']:.2%}")


def _resume(ctx: typer.Context, config: TrainConfig, out: Path, device: torch.device, download: bool,
            progress: ProgressFn) -> TrainResult:
    """Continue the run in ``out``; the options given on the command line (``config`` holds them)
    must match the stored ones, and --epochs counts only when given."""
    from alignsam_diag.train import ResumeConflict
    from alignsam_diag.train import resume as resume_run

    given = [name for name in ctx.params if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
    expect = {STORED_AS[name]: config.option(STORED_AS[name]) for name in given if name in STORED_AS}
    epochs = config.epochs if "epochs" in given else None
    try:
        return resume_run(out, device, epochs=epochs, expect=expect, download=download, progress=progress)
    except ResumeConflict as err:
        flags = {STORED_AS[p.name]: p.opts[0] for p in ctx.command.params if p.name in STORED_AS}
        raise err.relabel(flags.__getitem__) from None
