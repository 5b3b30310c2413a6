"""``alignsam-diag landscape``: 1-D/2-D loss surfaces of one or more checkpoints, resumable."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from alignsam_diag.errors import UserError

from .common import (Arch, ArchKwargs, BatchSize, Checkpoints, DataRoot, Dataset, Device, Full, Json, NumClasses,
                     Quiet, Samples, Seed, Split, Trust, load_analysis_inputs, print_json, progress_display,
                     resolve_device)

if TYPE_CHECKING:
    from alignsam_diag.analysis.landscape import LandscapeInputs, LandscapeResult

Opt = typer.Option


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``"LOW:HIGH"`` -> (low, high)."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise UserError(f"{option} {text}: write LOW:HIGH, for example {option} -1:1.") from None


def parse_points_per_pass(text: str) -> Optional[int]:
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"--points-per-pass {text}: write auto or a whole number ≥ 1.")


def _grid_json(values: Any) -> Any:
    """Nested lists with None where a cell is not computed (JSON has no NaN)."""
    return [_grid_json(v) for v in values] if hasattr(values, "__len__") else (
        None if math.isnan(values) else float(values))


def _result_json(result: LandscapeResult) -> dict[str, Any]:
    s, origin = result.surface, result.surface.grid.origin_cell()
    return {
        "checkpoint": result.checkpoint, "name": result.name,
        "x": s.grid.x.tolist(), "y": None if s.grid.y is None else s.grid.y.tolist(),
        "loss": _grid_json(s.loss), "accuracy": _grid_json(s.acc),
        "centre_loss": None if origin is None else _grid_json(s.loss.reshape(-1)[origin]),
        "centre_accuracy": None if origin is None else _grid_json(s.acc.reshape(-1)[origin]),
        "cells": s.grid.size, "cells_done": int(s.done.sum()), "cells_computed": result.cells_computed,
    }


def landscape(
    checkpoints: Checkpoints,
    dim: Annotated[int, Opt("--dim", help="1: loss along a line; 2: over a plane.")] = 2,
    grid: Annotated[int, Opt("--grid", help="Points per axis (Li et al.: 51).")] = 51,
    xrange: Annotated[str, Opt("--xrange", help="LOW:HIGH coordinates along direction 1.")] = "-1:1",
    yrange: Annotated[str, Opt("--yrange", help="LOW:HIGH coordinates along direction 2 (2-D).")] = "-1:1",
    directions: Annotated[str, Opt("--directions", help="random | interpolate:CKPT (towards another checkpoint, "
                                   "built like the first: same --arch, --arch-kwargs, --num-classes) | "
                                   "eigs:FILE.h5 (top Hessian eigenvectors from `eigs`) | surface:FILE.h5 "
                                   "(reuse an earlier landscape's directions).")] = "random",
    norm: Annotated[str, Opt("--norm", help="Random directions scaled per filter (Li et al.), per layer, or none.")] = "filter",
    ignore_biasbn: Annotated[bool, Opt("--ignore-biasbn/--no-ignore-biasbn",
                                       help="Zero the directions of 1-D tensors (biases, BatchNorm).")] = True,
    dataset: Dataset = None,
    data_root: DataRoot = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    num_classes: NumClasses = None,
    trust_checkpoint: Trust = False,
    split: Split = "train",
    samples: Samples = 4096,
    full: Full = False,
    batch_size: BatchSize = 512,
    seed: Seed = 0,
    bn: Annotated[str, Opt("--bn", help="eval: stored BatchNorm statistics — along random and eigs directions "
                           "the checkpoint's own at every point; along interpolate:CKPT they move with the weights "
                           "from the checkpoint's to CKPT's (x = 0 and x = 1 are the two models exactly; a 2-D "
                           "plane's random second direction leaves them); surface:FILE does what its stored "
                           "directions did. recompute: for every kind, re-estimated at every point (x = 0 "
                           "included) from --bn-batches training batches.")] = "eval",
    bn_batches: Annotated[int, Opt("--bn-batches", help="Training batches per point for --bn recompute.")] = 4,
    points_per_pass: Annotated[str, Opt("--points-per-pass", help="Grid points per forward pass (vmap); "
                                        "auto times the choices.")] = "auto",
    device: Device = "auto",
    out: Annotated[Path, Opt("--out", help="Surface file (HDF5); rerun the same command to resume it. One run "
                                           "at a time may write it.")] = Path("landscape.h5"),
    save_every: Annotated[float, Opt("--save-every", help="Seconds between saves of unfinished work.")] = 30.0,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Loss and accuracy on a grid around each checkpoint, along seeded filter-normalised random
    directions shared by all checkpoints (Li et al. 2018); written to --out, resumable. Under
    torchrun the grid cells are split across the ranks and rank 0 writes the file."""
    from alignsam_diag.analysis.directions import checkpoint_loader
    from alignsam_diag.analysis.landscape import LandscapeInputs, compute_landscapes
    from alignsam_diag.data import fixed_batches, sample_subset
    from alignsam_diag.landscape_types import LandscapeSpec

    spec = LandscapeSpec(dim=dim, grid=grid, xrange=parse_range(xrange, "--xrange"),
                         yrange=parse_range(yrange, "--yrange"), directions=directions, seed=seed, norm=norm,
                         ignore_biasbn=ignore_biasbn, data=dataset, split=split, samples=None if full else samples,
                         batch_size=batch_size, bn=bn, bn_batches=bn_batches)
    spec.validate()
    chosen_points = parse_points_per_pass(points_per_pass)
    missing = [str(c) for c in checkpoints if not c.is_file()]
    if missing:
        raise UserError(f"no such checkpoint file: {', '.join(missing)}.")
    torch_device = resolve_device(device)

    def load(checkpoint: str) -> LandscapeInputs:
        inputs = load_analysis_inputs(Path(checkpoint), dataset=dataset, data_root=data_root, arch=arch,
                                      arch_kwargs=arch_kwargs, num_classes=num_classes, trust=trust_checkpoint,
                                      split=split, samples=samples, full=full, seed=seed, batch_size=batch_size,
                                      device=torch_device)
        bn_inputs = None
        if bn == "recompute":
            train = sample_subset(inputs.splits.train, bn_batches * batch_size, seed)
            bn_inputs = [x for x, _ in fixed_batches(train, batch_size)]
        return LandscapeInputs(inputs.checkpoint.model, inputs.batches, bn_inputs,
                               load_target=checkpoint_loader(inputs.checkpoint.spec, trust_checkpoint),
                               optimizer=inputs.checkpoint.optimizer)

    with progress_display(quiet) as progress:
        results = compute_landscapes(out, spec, [str(c) for c in checkpoints], load, points_per_pass=chosen_points,
                                     progress=progress, save_every_s=save_every)
    if json_out:
        print_json({"file": str(out), "results": [_result_json(r) for r in results]})
        return
    for r in results:
        info = _result_json(r)
        centre = (f"centre loss {info['centre_loss']:.4g}, accuracy {info['centre_accuracy']:.2%}; "
                  if info["centre_loss"] is not None else "")
        typer.echo(f"{r.name}: {'×'.join(map(str, r.surface.grid.shape))} cells ({r.cells_computed} computed now); "
                   f"{centre}loss {float(r.surface.loss.min()):.4g} … {float(r.surface.loss.max()):.4g}")
    typer.echo(f"written to {out}; plot it with: alignsam-diag figures landscape {out}")
