"""``alignsam-diag train``: train a model with SGD or any SAM-family optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignsam_diag.data import DataSpec
from alignsam_diag.train import TrainConfig
from alignsam_diag.train import train as run_training

from .common import ArchKwargs, DataRoot, Device, Json, parse_json_object, print_json, progress_bar, resolve_device

Opt = typer.Option


def train(
    dataset: Annotated[str, Opt("--dataset", help="digits | fashion-mnist | cifar10 | cifar100 | imagefolder:PATH | npz:PATH")] = "digits",
    data_root: DataRoot = None,
    download: Annotated[bool, Opt("--download", help="Download CIFAR if it is not under --data-root.")] = False,
    arch: Annotated[str, Opt("--arch", "--model", help="Architecture name, timm:NAME, or package.module:factory.")] = "cnn-small",
    arch_kwargs: ArchKwargs = None,
    optimizer: Annotated[str, Opt("--optimizer", help="sgd | sam | asam | align-sam | align-asam | gsam | fsam | vasso | looksam | lookbehind-sam")] = "sgd",
    base: Annotated[str, Opt("--base", help="Base optimizer of the SAM family: sgd | adamw.")] = "sgd",
    epochs: Annotated[int, Opt("--epochs")] = 10,
    batch_size: Annotated[int, Opt("--batch-size", help="Train batch size |B^t|.")] = 128,
    lr: Annotated[float, Opt("--lr", help="Peak learning rate (cosine schedule to 0).")] = 0.1,
    momentum: Annotated[float, Opt("--momentum")] = 0.9,
    weight_decay: Annotated[float, Opt("--weight-decay")] = 5e-4,
    warmup_epochs: Annotated[float, Opt("--warmup-epochs", help="Linear warm-up before the cosine decay.")] = 0.0,
    rho: Annotated[Optional[float], Opt("--rho", help="Perturbation radius ρ (variant defaults: see README).", show_default=False)] = None,
    lam: Annotated[Optional[float], Opt("--lam", help="Align-SAM's trade-off λ; Friendly-SAM's averaging λ.", show_default=False)] = None,
    aux_batch_size: Annotated[Optional[int], Opt("--aux-batch-size", help="Align-SAM |B^a| (default |B^t|/4).", show_default=False)] = None,
    alpha: Annotated[Optional[float], Opt("--alpha", help="GSAM's, LookSAM's or Lookbehind-SAM's α.", show_default=False)] = None,
    k: Annotated[Optional[int], Opt("--k", help="LookSAM's or Lookbehind-SAM's k.", show_default=False)] = None,
    theta: Annotated[Optional[float], Opt("--theta", help="VaSSO's θ.", show_default=False)] = None,
    sigma: Annotated[Optional[float], Opt("--sigma", help="Friendly-SAM's σ.", show_default=False)] = None,
    eta: Annotated[Optional[float], Opt("--eta", help="ASAM's η.", show_default=False)] = None,
    rho_min: Annotated[Optional[float], Opt("--rho-min", help="GSAM's smallest radius.", show_default=False)] = None,
    adaptive_alpha: Annotated[Optional[bool], Opt("--adaptive-alpha/--fixed-alpha", help="Lookbehind-SAM's adaptive α.", show_default=False)] = None,
    augment: Annotated[Optional[bool], Opt("--augment/--no-augment", help="The paper's CIFAR augmentation (default: on for CIFAR).", show_default=False)] = None,
    label_noise: Annotated[float, Opt("--label-noise", help="Fraction of training labels flipped (symmetric).")] = 0.0,
    subset: Annotated[Optional[int], Opt("--subset", help="Train on a seeded subset of N samples.", show_default=False)] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    device: Device = "auto",
    amp: Annotated[Optional[str], Opt("--amp", help="bf16 autocast.", show_default=False)] = None,
    out: Annotated[Path, Opt("--out", help="Run folder for checkpoints and history.h5.")] = Path("checkpoints/run"),
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --out from last.pt.")] = False,
    save_every: Annotated[int, Opt("--save-every", help="Also keep epoch_NNN.pt every N epochs (0: only last.pt).")] = 0,
    json_out: Json = False,
) -> None:
    """Train a model; write <out>/last.pt, epoch_NNN.pt and history.h5."""
    hyper = {name: value for name, value in
             dict(rho=rho, lam=lam, alpha=alpha, k=k, theta=theta, sigma=sigma, eta=eta, rho_min=rho_min,
                  adaptive_alpha=adaptive_alpha).items()
             if value is not None}
    config = TrainConfig(
        data=DataSpec(dataset, data_root, subset, label_noise, seed, augment, download=download),
        arch=arch, arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"), optimizer=optimizer,
        base=base, hyper=hyper, epochs=epochs, batch_size=batch_size, aux_batch_size=aux_batch_size,
        lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed,
        amp=amp, save_every=save_every)
    with progress_bar() as progress:
        result = run_training(config, out, resolve_device(device), resume=resume, progress=progress)
    if json_out:
        print_json({"run": str(result.run_dir), **result.metrics})
    else:
        m = result.metrics
        typer.echo(f"{result.run_dir}: epoch {int(m['epoch'])}  train loss {m['train_loss']:.4f}  "
                   f"acc {m['train_acc']:.2%}  test loss {m['test_loss']:.4f}  acc {m['test_acc']:.2%}")
