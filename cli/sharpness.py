"""``alignsam-diag sharpness``: worst-case and average-case sharpness (standard or adaptive, ℓ2 or
ℓ∞, m-sharpness) of one or more checkpoints at one or more radii, optionally with λ_max and tr(H);
one table row per (checkpoint, ρ), or JSON rows per (checkpoint, measure, ρ)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from alignsam_diag.errors import OptionError, UserError
from alignsam_diag.files import output_lock

from .common import (Arch, ArchKwargs, BatchSize, Checkpoints, DataRoot, Dataset, Device, Full, Json, NumClasses,
                     Quiet, Samples, Seed, Split, Trust, flag, load_analysis_inputs, print_json, progress_display,
                     resolve_device)

if TYPE_CHECKING:
    from alignsam_diag.analysis.sharpness import SharpnessReport
    from alignsam_diag.analysis.sharpness_core import SharpnessOptions

Opt = typer.Option
FLAGS = {"steps": "--steps", "draws_per_pass": "--draws-per-pass"}  # where this command's flags differ from eigs'


def parse_rhos(text: str) -> list[float]:
    """``--rho 0.01,0.02`` as [0.01, 0.02]."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise OptionError("rho", text, "write a radius or comma-separated radii, e.g. 0.01,0.02,0.05.") from None
    if any(not (math.isfinite(v) and v > 0) for v in values):
        raise OptionError("rho", text, "every radius must be a positive number.")
    if len(set(values)) < len(values):
        raise OptionError("rho", text, "a radius is repeated.")
    return values


def parse_count(text: str, option: str, word: str) -> Optional[int]:
    """``word`` (all, auto) as None, else a whole number ≥ 1."""
    if text == word:
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise OptionError(option, text, f"write {word} or a whole number ≥ 1.")


def checked(options: SharpnessOptions) -> None:
    """``options.validate()`` with this command's flags in the message."""
    try:
        options.validate()
    except OptionError as err:
        raise UserError(err.render(lambda name: FLAGS.get(name) or flag(name))) from None


def _number(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def table(reports: list[SharpnessReport], measures: list[str], rhos: list[float]) -> str:
    """One row per (checkpoint, ρ): the loss and error increase of each measure (average-case
    ± one standard error over the draws), then λ_max and tr(H) when computed."""
    with_eigs = any(r.eigs is not None for r in reports)
    header = ["checkpoint", "ρ"]
    for measure in measures:
        header += ["worst Δloss", "worst Δerr"] if measure == "worst" else ["average Δloss ± s.e.", "average Δerr"]
    header += ["λ_max", "tr(H) ± s.e."] if with_eigs else []
    lines = []
    for report in reports:
        by_key = {(row.measure, row.rho): row.estimate for row in report.rows}
        for rho in rhos:
            cells = [report.rows[0].checkpoint, f"{rho:g}"]
            for measure in measures:
                e = by_key[(measure, rho)]
                loss = _number(e.loss_increase, ".4g")
                if measure == "average":
                    loss += f" ± {_number(e.loss_stderr, '.2g')}"
                cells += [loss, _number(100 * e.error_increase, "+.2f") + " pp"]
            if with_eigs:
                eigs = report.eigs
                cells += [f"{eigs.lambda_max:.4g}", f"{eigs.trace:.4g} ± {eigs.trace_stderr:.2g}"] if eigs else ["-", "-"]
            lines.append(cells)
    from alignsam_diag.plots.tables import aligned

    return aligned([header] + lines)


def _describe(options: SharpnessOptions, reports: list[SharpnessReport], split: str) -> str:
    """The settings line above the table."""
    e = reports[0].rows[0].estimate
    norm = {"l2": "ℓ2", "linf": "ℓ∞"}[options.norm]
    kind = "adaptive" if options.adaptive else "standard"
    groups = "the plain measure" if e.m == e.samples else f"m = {e.m}: {e.groups} groups"
    return (f"{kind} {norm} sharpness on {e.samples} {split} samples ({groups}; worst case: {options.steps} ascent "
            f"steps × {options.restarts} restart(s); average case: {options.draws} draws). Δerr in percentage points.")


def as_json(report: SharpnessReport) -> list[dict[str, Any]]:
    """The report's rows as JSON objects (NaN written as null), with λ_max and tr(H) when computed."""
    rows = []
    for row in report.rows:
        item = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.as_dict().items()}
        if report.eigs is not None:
            item.update(lambda_max=report.eigs.lambda_max, trace=report.eigs.trace,
                        trace_stderr=report.eigs.trace_stderr)
        rows.append(item)
    return rows


def sharpness(
    checkpoints: Checkpoints,
    measure: Annotated[str, Opt("--measure", help="worst | average | worst,average.")] = "worst,average",
    norm: Annotated[str, Opt("--norm", help="l2 | linf: the ball of the worst case; the average case draws "
                                            "δ ~ N(0, ρ²I) (l2) or uniform in [−ρ, ρ] per weight (linf).")] = "l2",
    adaptive: Annotated[bool, Opt("--adaptive/--standard", help="Adaptive: the ball and the draws scaled by |w| "
                                                                "per weight (ρ in units of |w|: scale-invariant).")] = False,
    rho: Annotated[str, Opt("--rho", help="Radius, or comma-separated radii (a curve: 'figures "
                                          "sharpness-radius').")] = "0.05",
    m: Annotated[str, Opt("--m", help="Samples per group: the measure is computed per group of m samples and "
                                      "averaged (SAM's m-sharpness); all: the plain measure.")] = "128",
    samples: Samples = 4096,
    full: Full = False,
    split: Split = "train",
    batch_size: BatchSize = 512,
    steps: Annotated[int, Opt("--steps", help="Gradient ascent steps per restart (worst case).")] = 20,
    restarts: Annotated[int, Opt("--restarts", help="Random restarts per group (worst case; the best counts).")] = 1,
    draws: Annotated[int, Opt("--draws", help="Random perturbations per group (average case).")] = 20,
    draws_per_pass: Annotated[str, Opt("--draws-per-pass", help="Draws evaluated per forward pass (vmap); auto: "
                                                                "1 on the CPU, timed on CUDA.")] = "auto",
    seed: Seed = 0,
    bn: Annotated[str, Opt("--bn", help="eval: BatchNorm uses its stored statistics; train: the statistics of "
                                        "each forward chunk (min(m, --batch-size) samples), the stored ones "
                                        "untouched (--with-eigs stays in eval).")] = "eval",
    params: Annotated[Optional[list[str]], Opt("--params", help="Only perturb parameters whose names match this "
                                               "pattern (fnmatch, e.g. '*.weight'); repeatable.")] = None,
    with_eigs: Annotated[bool, Opt("--with-eigs", help="Also λ_max (Lanczos) and tr(H) (Hutch++) on the same "
                                                       "samples, as eigs computes them.")] = False,
    dataset: Dataset = None,
    data_root: DataRoot = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    num_classes: NumClasses = None,
    trust_checkpoint: Trust = False,
    device: Device = "auto",
    out: Annotated[Optional[Path], Opt("--out", help="Sharpness HDF5 file, written after every row: rerun the "
                                                     "same command to continue, or with more radii to add "
                                                     "rows. One run at a time may write it.")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
) -> None:
    """Worst-case (projected gradient ascent) and average-case (random draws) sharpness
    L(w + δ) − L(w) of the mean cross-entropy on fixed samples (default: 4096 seeded training
    samples, groups of 128), one row per checkpoint and radius."""
    from alignsam_diag.analysis.sharpness import analyse, check_measures
    from alignsam_diag.analysis.sharpness_core import SharpnessOptions

    measures = [part.strip() for part in measure.split(",")]
    check_measures(measures)
    rhos = parse_rhos(rho)
    options = SharpnessOptions(norm=norm, adaptive=adaptive, m=parse_count(m, "m", "all"), steps=steps,
                               restarts=restarts, draws=draws, seed=seed, bn=bn, params=params,
                               draws_per_pass=parse_count(draws_per_pass, "draws_per_pass", "auto"))
    checked(options)
    target = resolve_device(device)
    reports = []
    with contextlib.nullcontext() if out is None else output_lock(out), progress_display(quiet) as progress:
        for checkpoint in checkpoints:
            inputs = load_analysis_inputs(checkpoint, dataset=dataset, data_root=data_root, arch=arch,
                                          arch_kwargs=arch_kwargs, num_classes=num_classes, trust=trust_checkpoint,
                                          split=split, samples=samples, full=full, seed=seed,
                                          batch_size=batch_size, device=target)
            data: dict[str, Any] = {"split": split, "samples": len(inputs.data),
                                    "dataset": dataset or "from checkpoint"}
            if bn == "train":
                data["batch_size"] = batch_size  # the batch statistics depend on the chunks
            reports.append(analyse(checkpoint, inputs.checkpoint.model, inputs.batches, measures, rhos, options,
                                   data, out, with_eigs, progress, inputs.checkpoint.optimizer))
    if json_out:
        print_json([row for report in reports for row in as_json(report)])
        return
    typer.echo(_describe(options, reports, split))
    typer.echo(table(reports, measures, rhos))
    if out is not None:
        computed = sum(r.computed for r in reports)
        typer.echo(f"written to {out} ({computed} row(s) computed now, {sum(len(r.rows) for r in reports) - computed} "
                   "read back)" + (f"; plot it with: alignsam-diag figures sharpness-radius {out}"
                                   if len(rhos) > 1 else ""))
