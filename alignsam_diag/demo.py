"""The main job: the Align-SAM paper's pipeline end to end on a small data set.

:func:`run_demo` trains SGD, SAM and Align-SAM (same seed, budget and hyper-parameters) with
gradient-alignment and λ_max tracking, then measures the three final models — top-k Hessian
eigenvalues with trace and spectral density (Table 10), a 2-D loss landscape around each
(Figures 3–4), the train/auxiliary gradient cosines at every saved epoch (Figure 1), top-1/top-5
on a corrupted test set (Table 6's layout), worst- and average-case sharpness — and runs a small
λ sweep of Align-SAM (Figure 2). Every stage writes its results under the output folder like the
command of the same name would, so ``alignsam-diag figures all DIR`` draws the appendix from them.

A stage is skipped when the folder's ``demo.json`` records it as finished with the same settings
(a rerun after a kill continues with the first unfinished stage; the long stages also resume
their own work). :class:`DemoSettings` holds the budget: ``for_dataset("digits")`` is the
default (≤ 5 minutes on 2 CPU cores), ``quick=True`` a ≤ 1-minute version of every stage.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .errors import UserError
from .files import atomic_write, output_lock
from .progress import ProgressFn, report

OPTIMIZERS = ("sgd", "sam", "align-sam")
STATE_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """The budget of every stage. Sizes are sample counts; ``*_every`` in optimizer steps."""

    dataset: str = "digits"
    subset: Optional[int] = None  # training samples (None: the whole training split)
    arch: str = "cnn-small"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    track_every: int = 10
    track_samples: int = 512
    eigs_samples: int = 1024
    eigs_k: int = 5
    trace_probes: int = 30  # Hutch++ products for tr(H)
    density_runs: int = 2  # SLQ runs × steps for the spectral density
    density_steps: int = 40
    grid: int = 21
    landscape_samples: int = 1024
    cosine_pairs: int = 4
    corruptions: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                                    "motion_blur", "brightness", "contrast", "elastic_transform", "pixelate",
                                    "jpeg_compression")
    severities: tuple[int, ...] = (1, 3, 5)
    sharpness_samples: int = 512
    sharpness_rhos: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
    lams: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sweep_epochs: int = 6

    @classmethod
    def for_dataset(cls, dataset: str = "digits", quick: bool = False) -> "DemoSettings":
        """The default budget for ``dataset`` (digits | fashion-mnist); ``quick``: every stage
        cut to a few seconds (the tests' setting)."""
        if dataset not in ("digits", "fashion-mnist"):
            raise UserError(f"demo --dataset {dataset}: choose digits or fashion-mnist.")
        settings = cls(dataset=dataset)
        if dataset == "fashion-mnist":
            settings = replace(settings, subset=10000, epochs=10, batch_size=128, sweep_epochs=4,
                               corruptions=settings.corruptions + ("glass_blur", "zoom_blur", "snow", "frost",
                                                                   "fog"),
                               severities=(1, 2, 3, 4, 5))
        if quick:
            settings = replace(settings, subset=400 if dataset == "digits" else 1000, epochs=2, track_every=4,
                               track_samples=128, eigs_samples=256, eigs_k=3, trace_probes=9, density_runs=1,
                               density_steps=20, grid=7, landscape_samples=256,
                               cosine_pairs=2, corruptions=("gaussian_noise", "brightness"), severities=(1, 5),
                               sharpness_samples=128, sharpness_rhos=(0.02, 0.05), lams=(0.5, 2.0),
                               sweep_epochs=2)
        return settings

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Stage:
    """One step of the pipeline: its ``name`` (shown in the progress display), what it makes
    (``what``) and the function that makes it under the output folder."""

    name: str
    what: str
    run: Callable[["DemoContext"], None]


@dataclass
class DemoContext:
    """What the stages share: the output folder, settings, device and progress callback."""

    out: Path
    settings: DemoSettings
    device: torch.device
    progress: Optional[ProgressFn]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def checkpoints(self) -> list[Path]:
        """The final checkpoints of the three training runs, in :data:`OPTIMIZERS` order."""
        return [self.out / "train" / "runs" / f"optimizer={name}" / "last.pt" for name in OPTIMIZERS]


@dataclass
class DemoResult:
    """What :func:`run_demo` did: per stage, seconds spent now (0 for a skipped stage), which
    stages were skipped, and the summary rows (one per optimizer, :func:`summary_rows`)."""

    out: Path
    seconds: dict[str, float]
    skipped: list[str]
    summary: list[dict[str, Any]]


def _train(ctx: DemoContext) -> None:
    from .sweep import build_spec, run_sweep

    s = ctx.settings
    base = {"data.name": s.dataset, "data.subset": s.subset, "arch": s.arch, "epochs": s.epochs,
            "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed, "save_every": 1,
            "track_cosine_every": s.track_every, "track_sharpness_every": s.track_every,
            "track_samples": s.track_samples}
    spec = build_spec(sets=[f"optimizer={','.join(OPTIMIZERS)}"],
                      base={k: v for k, v in base.items() if v is not None}, base_source="the demo")
    run_sweep(spec, ctx.out / "train", ctx.device, ctx.progress)


def _lambda_sweep(ctx: DemoContext) -> None:
    from .sweep import SweepSpec, run_sweep

    s = ctx.settings
    base = {"data.name": s.dataset, "data.subset": s.subset, "arch": s.arch, "epochs": s.sweep_epochs,
            "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed}
    grids = [{"optimizer": ["align-sam"], "hyper.lam": list(s.lams)}, {"optimizer": ["sam"]}]  # SAM: the baseline
    spec = SweepSpec({k: v for k, v in base.items() if v is not None}, grids)
    run_sweep(spec, ctx.out / "lambda", ctx.device, ctx.progress)


def _eigs(ctx: DemoContext) -> None:
    from .analysis.spectrum import EigsOptions, analyse
    from .inputs import load_inputs

    s = ctx.settings
    options = EigsOptions(k=s.eigs_k, trace="hutch++", trace_probes=s.trace_probes, density=True,
                          density_steps=s.density_steps, density_runs=s.density_runs)
    for checkpoint in ctx.checkpoints:
        inputs = load_inputs(checkpoint, samples=s.eigs_samples, seed=s.seed, device=ctx.device)
        analyse(str(checkpoint.relative_to(ctx.out)), inputs.checkpoint.model, inputs.batches, options,
                {"split": "train", "samples": len(inputs.data), "dataset": s.dataset}, ctx.out / "eigs.h5",
                False, ctx.progress, inputs.checkpoint.optimizer)


def _landscape(ctx: DemoContext) -> None:
    from .analysis.landscape import LandscapeInputs, compute_landscapes
    from .inputs import load_inputs
    from .landscape_types import LandscapeSpec

    s = ctx.settings
    spec = LandscapeSpec(dim=2, grid=s.grid, seed=s.seed, samples=s.landscape_samples)

    def load(checkpoint: str) -> LandscapeInputs:
        inputs = load_inputs(ctx.out / checkpoint, samples=s.landscape_samples, seed=s.seed,
                             batch_size=spec.batch_size, device=ctx.device)
        return LandscapeInputs(inputs.checkpoint.model, inputs.batches, optimizer=inputs.checkpoint.optimizer)

    names = [str(c.relative_to(ctx.out)) for c in ctx.checkpoints]
    compute_landscapes(ctx.out / "landscape.h5", spec, names, load, progress=ctx.progress, save_every_s=10)


def _cosine(ctx: DemoContext) -> None:
    from .analysis.alignment import CosineOptions, analyse_checkpoint, checkpoint_files
    from .inputs import load_inputs

    options = CosineOptions(pairs=ctx.settings.cosine_pairs, seed=ctx.settings.seed)
    for checkpoint in (f for run in ctx.checkpoints for f in checkpoint_files(run.parent)):
        inputs = load_inputs(checkpoint, samples=None, seed=ctx.settings.seed, batch_size=1 << 20, device=ctx.device)
        analyse_checkpoint(checkpoint, inputs.checkpoint, inputs.data, inputs.splits.augment, options,
                           ctx.out / "cosine.h5", ctx.progress)


def _robustness(ctx: DemoContext) -> None:
    from .analysis.robustness import RobustnessOptions, evaluate_robustness
    from .data.suite_types import SuiteRequest

    s = ctx.settings
    request = SuiteRequest(name="corrupt", corruptions=s.corruptions, severities=s.severities, dataset=s.dataset,
                           seed=s.seed, cache_dir=str(ctx.out / "corruption-cache"))
    evaluate_robustness(ctx.out / "robustness.h5", [str(c) for c in ctx.checkpoints], [request],
                        options=RobustnessOptions(workers=min(2, os.cpu_count() or 1)), device=ctx.device,
                        progress=ctx.progress)


def _sharpness(ctx: DemoContext) -> None:
    from .analysis.sharpness import analyse
    from .analysis.sharpness_core import SharpnessOptions
    from .inputs import load_inputs

    s = ctx.settings
    options = SharpnessOptions(m=128, steps=10, draws=10, seed=s.seed)
    for checkpoint in ctx.checkpoints:
        inputs = load_inputs(checkpoint, samples=s.sharpness_samples, seed=s.seed, device=ctx.device)
        analyse(str(checkpoint.relative_to(ctx.out)), inputs.checkpoint.model, inputs.batches, ["worst", "average"],
                list(s.sharpness_rhos), options, {"split": "train", "samples": len(inputs.data), "dataset": s.dataset},
                ctx.out / "sharpness.h5", False, ctx.progress, inputs.checkpoint.optimizer)


STAGES: list[Stage] = [
    Stage("train", "SGD, SAM and Align-SAM with cosine and λ_max tracking", _train),
    Stage("eigs", "top-k Hessian eigenvalues, trace and spectral density (Table 10)", _eigs),
    Stage("landscape", "2-D loss landscapes (Figures 3–4)", _landscape),
    Stage("cosine", "gradient cosines at every saved epoch (Figure 1)", _cosine),
    Stage("robustness", "top-1/top-5 on the corrupted test set (Table 6's layout)", _robustness),
    Stage("sharpness", "worst- and average-case sharpness against the radius ρ", _sharpness),
    Stage("lambda", "Align-SAM's λ sweep (Figure 2)", _lambda_sweep),
]


def _state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.exists():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state.get("stages"), dict) else {"stages": {}}
    except (ValueError, AttributeError):
        return {"stages": {}}  # a damaged record only costs a rerun of the stages


def _save_state(out: Path, state: dict[str, Any]) -> None:
    with atomic_write(out / STATE_FILE) as tmp:
        tmp.write_text(json.dumps(state, indent=2))


def run_demo(out: str | Path, settings: DemoSettings, device: str | torch.device = "cpu",
             progress: Optional[ProgressFn] = None) -> DemoResult:
    """Run every stage of :data:`STAGES` into ``out`` (made if missing), skipping those that a
    previous run with the same settings finished. progress: a ``"demo"`` update (stages done of
    all, the stage that starts) before each stage, the stage's own updates in between. The
    figures (``alignsam-diag figures all``) are the caller's last stage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out, settings, torch.device(device), progress)
    skipped = []
    with output_lock(out / STATE_FILE):
        state = _state(out)
        wanted = settings.to_dict()
        for i, stage in enumerate(STAGES):
            if state["stages"].get(stage.name) == wanted:
                skipped.append(stage.name)
                continue
            report(progress, "demo", i, len(STAGES), log=True, stage=stage.name, what=stage.what)
            start = time.perf_counter()
            stage.run(ctx)
            ctx.seconds[stage.name] = time.perf_counter() - start
            state["stages"][stage.name] = wanted
            _save_state(out, state)
        report(progress, "demo", len(STAGES), len(STAGES), log=True)
    return DemoResult(out, ctx.seconds, skipped, summary_rows(ctx))


def summary_rows(ctx: DemoContext) -> list[dict[str, Any]]:
    """Per optimizer: final test accuracy, λ1 of the Hessian and mean corrupted top-1 (None
    where the stage's results are missing)."""
    from .analysis.robustness import summaries
    from .store.robustness import read_records as read_robustness
    from .store.spectrum import read_records as read_eigs
    from .store.sweep import read_summary

    def read(name: str, reader: Callable[[Path], Any], empty: Any) -> Any:
        return reader(ctx.out / name) if (ctx.out / name).exists() else empty

    runs = {r.optimizer: r for r in read("train/sweep.h5", read_summary, None).records}
    eigs = read("eigs.h5", read_eigs, {})
    corrupted = {s.checkpoint: s.top1 for s in summaries(read("robustness.h5", read_robustness, []))}
    rows = []
    for name, checkpoint in zip(OPTIMIZERS, ctx.checkpoints):
        record = eigs.get(str(checkpoint.relative_to(ctx.out)))
        rows.append({"optimizer": name, "test_acc": runs[name].test_acc if name in runs else None,
                     "lambda_1": float(record.spectrum.eigenvalues[0]) if record and record.spectrum else None,
                     "corrupted_top1": corrupted.get(str(checkpoint))})
    return rows
