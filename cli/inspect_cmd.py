"""``alignsam-diag inspect``: what is inside a checkpoint (ours or a third party's)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer

from alignsam_diag.errors import UserError

from .common import (DATASET_NAMES, Arch, ArchKwargs, DataRoot, InputShape, Json, NumClasses, Trust, parse_input_shape,
                     parse_json_object, print_json)

if TYPE_CHECKING:
    from alignsam_diag.models.summary import CheckpointSummary


def _leaves(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """(dotted key, value as text) for every leaf of nested dicts, e.g. ("optimizer.hyper.rho", "0.05")."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, f"{key}.{k}")
    else:
        yield key, str(value)


def _render(path: Path, s: CheckpointSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    out.print(f"[bold]{path}[/bold]  ({s.source})")
    out.print(f"architecture {s.arch}: {s.num_classes} classes, {s.in_channels} input channels, "
              f"{s.image_size}px; {s.parameters:,} parameters")
    layers = Table("layer type", "parameters", "share", title="parameters by layer type", title_justify="left")
    for name, n in s.parameters_by_layer.items():
        layers.add_row(name, f"{n:,}", f"{n / s.parameters:.1%}")
    out.print(layers)
    if s.meta:
        meta = Table("key", "value", title="stored metadata", title_justify="left")
        for key, value in s.meta.items():
            for row in _leaves(value, key):
                meta.add_row(*row)
        out.print(meta)
    if s.history:
        columns = [c for c in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr") if c in s.history]
        hist = Table(*columns, title="training history", title_justify="left")
        for row in zip(*(s.history[c] for c in columns)):
            hist.add_row(*(f"{int(v)}" if c == "epoch" else f"{v:.4g}" for c, v in zip(columns, row)))
        out.print(hist)


def _input_shape(dataset: Optional[str], data_root: Optional[str],
                 input_shape: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(channels, image size) of the model's input as the user gave it, else (None, None)."""
    if dataset and input_shape:
        raise UserError("give --dataset or --input-shape, not both (the data set fixes the input shape).")
    if dataset:
        from alignsam_diag.data import DataSpec, load_data

        splits = load_data(DataSpec(dataset, data_root))
        return splits.in_channels, splits.image_size
    return parse_input_shape(input_shape) or (None, None)


def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: ours, a state dict (.pt/.pth/.bin), safetensors or Lightning .ckpt.")],
    arch: Arch = None,
    num_classes: NumClasses = None,
    arch_kwargs: ArchKwargs = None,
    input_shape: InputShape = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help=f"Data set whose input shape the model takes (a file without a model spec): "
                          f"{DATASET_NAMES}.")] = None,
    data_root: DataRoot = None,
    trust_checkpoint: Trust = False,
    json_out: Json = False,
) -> None:
    """Show a checkpoint's architecture, parameter counts by layer type, metadata and history
    (a file without a model spec needs --arch; what the weights cannot tell of the input shape,
    give with --input-shape C,H,W or --dataset)."""
    from alignsam_diag.models.checkpoint import load_checkpoint
    from alignsam_diag.models.summary import summarise

    in_channels, image_size = _input_shape(dataset, data_root, input_shape)
    ckpt = load_checkpoint(checkpoint, arch=arch, num_classes=num_classes,
                           arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"), trust=trust_checkpoint,
                           in_channels=in_channels, image_size=image_size)
    summary = summarise(ckpt)
    if json_out:
        print_json({"checkpoint": str(checkpoint), **dataclasses.asdict(summary)})
    else:
        _render(checkpoint, summary)
