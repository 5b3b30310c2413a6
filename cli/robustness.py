"""``alignsam-diag robustness``: top-1/top-5 of checkpoints on ImageNet, ImageNet-C/R, CIFAR-10/100-C
or corruptions generated for any data set, mCE; the paper's Table 6 layout or JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from alignsam_diag.data.suite_types import PREPROCESS, SUITES, SuiteRequest, parse_corruptions, parse_severities
from alignsam_diag.errors import UserError

from .common import (Arch, ArchKwargs, BatchSize, Checkpoints, Dataset, Device, Json, NumClasses, Quiet, Trust,
                     is_main_rank, parse_json_object, print_json, progress_display, resolve_device)

if TYPE_CHECKING:
    from alignsam_diag.analysis.robustness import SuiteSummary
    from alignsam_diag.store.robustness import CellScore

Opt = typer.Option


def suite_requests(suites: list[str], roots: list[str], **common: Any) -> list[SuiteRequest]:
    """One request per ``--suite``, paired in order with the ``--data-root`` values (none: every
    suite's default folder; one per suite otherwise)."""
    if roots and len(roots) != len(suites):
        raise UserError(f"--data-root: give one per --suite, in the same order ({len(suites)} suite(s), "
                        f"{len(roots)} folder(s)), or none.")
    paired = zip(suites, roots or [None] * len(suites))
    requests = [SuiteRequest(name=name, root=root, **common) for name, root in paired]
    if len({(r.name, r.root) for r in requests}) < len(requests):
        raise UserError("--suite: the same suite and folder are given twice.")
    for request in requests:
        request.validate()
    return requests


def _cell_json(c: CellScore) -> dict[str, Any]:
    return {"corruption": c.corruption, "severity": c.severity, "top1": c.top1, "top5": c.top5,
            "samples": c.samples, "seconds": c.seconds}


def as_json(s: SuiteSummary) -> dict[str, Any]:
    e = s.errors
    return {
        "checkpoint": s.checkpoint, "suite": s.suite, "optimizer": s.optimizer,
        "clean_top1": s.clean.top1 if s.clean else None, "clean_top5": s.clean.top5 if s.clean else None,
        "top1": s.top1, "top5": s.top5,
        "mce": e.mce if e else None, "relative_mce": e.relative_mce if e else None,
        "ce": e.ce if e else None, "relative_ce": e.relative_ce if e else None, "note": s.note,
        "cells_computed": s.cells_computed, "settings": s.settings, "cells": [_cell_json(c) for c in s.cells],
    }


def robustness(
    checkpoints: Checkpoints,
    suite: Annotated[Optional[list[str]], Opt("--suite", show_default=False, help=(
        f"{' | '.join(SUITES)}; repeatable (one Table-6 row per checkpoint across them). Default: corrupt "
        "(the checkpoint's data set, corrupted here)."))] = None,
    data_root: Annotated[Optional[list[str]], Opt("--data-root", show_default=False, help=(
        "Folder of each --suite, in the same order: imagenet: the validation ImageFolder (<wnid>/ folders); "
        "imagenet-c: <corruption>/<severity>/<wnid>/ (or with the group level noise/ blur/ weather/ digital/ "
        "extra/); imagenet-r: its <wnid>/ folders; cifar10-c/cifar100-c: <corruption>.npy and labels.npy "
        "(torchvision's CIFAR folder in it or beside it gives the clean accuracy); corrupt: the data set's "
        "files (default: where the checkpoint's data set lives)."))] = None,
    dataset: Dataset = None,
    corruptions: Annotated[Optional[str], Opt("--corruptions", show_default=False, help=(
        "Comma-separated names, or benchmark (the 15 of mCE), extra (the 4 others), all, noise, blur, weather, "
        "digital. Default: the 15 benchmark corruptions (for suites on disk: those found there)."))] = None,
    severities: Annotated[Optional[str], Opt("--severities", show_default=False,
                                             help="1-5, or a list such as 1,3,5. Default: 1-5 (on disk: those there).")
                          ] = None,
    preprocess: Annotated[str, Opt("--preprocess", help=(
        f"{' | '.join(PREPROCESS)}: ImageNet-C's 224-px images centre-cropped (hendrycks/robustness) or resized "
        "to 256 and cropped (AugMix's script); recorded with the results. ImageNet and ImageNet-R always "
        "resize to 256 and crop 224."))] = "center-crop-224",
    normalise: Annotated[str, Opt("--normalise", help=(
        "auto: the checkpoint's own data normalisation (without one: ImageNet's for the ImageNet suites, the "
        "data set's for corrupt) | none | imagenet | MEAN/STD per channel, e.g. 0.5,0.5,0.5/0.25,0.25,0.25."))
                         ] = "auto",
    seed: Annotated[int, Opt("--seed", help="Seed of the generated corruptions (corrupt suite).")] = 0,
    cache_dir: Annotated[Optional[Path], Opt("--cache-dir", show_default=False, help=(
        "Where generated corruptions are cached, once per (data set, corruption, severity, seed). Default: "
        "$XDG_CACHE_HOME/alignsam-diag/corruptions (~/.cache/...)."))] = None,
    batch_size: BatchSize = 256,
    workers: Annotated[Optional[int], Opt("--workers", show_default=False, help=(
        "Processes that decode images and generate corruptions (0: this one). Default: the CPUs, at most 8."))
                       ] = None,
    amp: Annotated[str, Opt("--amp", help="none | bf16 (autocast; recorded with the results).")] = "none",
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    num_classes: NumClasses = None,
    trust_checkpoint: Trust = False,
    device: Device = "auto",
    out: Annotated[Path, Opt("--out", help="Results file (HDF5), written after every cell: rerun the same command "
                                           "to continue, or with other suites to add columns. One run at a time "
                                           "may write it.")] = Path("robustness.h5"),
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Top-1 and top-5 accuracy per (corruption, severity), their means, the clean accuracy, and
    ImageNet-C's mCE, printed as the paper's Table 6 (one row per checkpoint)."""
    from alignsam_diag.analysis.robustness import ModelSource, RobustnessOptions, evaluate_robustness, summaries
    from alignsam_diag.distributed import on_main_rank
    from alignsam_diag.files import check_writable
    from alignsam_diag.plots.robustness_table import render_text, table6
    from alignsam_diag.store.robustness import read_records

    requests = suite_requests(suite or ["corrupt"], data_root or [], corruptions=parse_corruptions(corruptions),
                              severities=parse_severities(severities), preprocess=preprocess, dataset=dataset,
                              seed=seed, cache_dir=None if cache_dir is None else str(cache_dir))
    options = RobustnessOptions(batch_size=batch_size, amp=amp, normalise=normalise,
                                workers=min(8, os.cpu_count() or 1) if workers is None else workers)
    options.validate()
    missing = [str(c) for c in checkpoints if not c.is_file()]
    if missing:
        raise UserError(f"no such checkpoint file: {', '.join(missing)}.")
    on_main_rank(check_writable, out, what=f"checking {out}")
    source = ModelSource(arch=arch, num_classes=num_classes, trust=trust_checkpoint,
                         arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"))
    with progress_display(quiet) as progress:
        results = evaluate_robustness(out, [str(c) for c in checkpoints], requests, source=source, options=options,
                                      device=resolve_device(device), progress=progress)
    if not is_main_rank():  # under torchrun rank 0 alone reads the file back and prints
        return
    if json_out:
        print_json([as_json(r) for r in results])
        return
    run = {(r.checkpoint, r.suite): r for r in results}
    stored = [run.get((s.checkpoint, s.suite), s) for s in summaries(read_records(out), [str(c) for c in checkpoints])]
    typer.echo(render_text(table6(stored)))
    typer.echo(f"written to {out}; as Markdown and LaTeX: alignsam-diag figures robustness {out}")
