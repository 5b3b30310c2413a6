"""``alignsam-diag figures all INPUT... --out DIR``: every figure and table the inputs hold.

The inputs (result files, run folders, or any folder, searched recursively) are sorted by the
kind their HDF5 files record (:func:`alignsam_diag.store.discover.find_results`); each kind is
drawn by the ``figures`` subcommand of its own (so ``figures all`` draws nothing they would not),
as PNG and PDF, tables as Markdown and LaTeX, into DIR, and ``DIR/REPORT.md`` shows them all
with a line on what each is and which files it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Iterator

import typer

from alignsam_diag.errors import UserError

if TYPE_CHECKING:
    from alignsam_diag.plots.report import Artifact
    from alignsam_diag.store.discover import Found

FORMATS = ("png", "pdf")


def _figure(title: str, what: str, sources: list[Path], out: Path, stem: str,
            draw: Callable[[Path], None]) -> Artifact:
    """An artifact drawn by ``draw(path)`` once per format into ``out/stem.<format>``."""
    from alignsam_diag.plots.report import Artifact

    files = [out / f"{stem}.{fmt}" for fmt in FORMATS]
    for path in files:
        draw(path)
    return Artifact(title, what, sources, files)


def _groups(histories: list[Path]) -> dict[str, list[Path]]:
    """Run folders by the sweep that holds them (the nearest folder above with a sweep.h5, by its
    name), the others together as ``runs``; in each, the runs in the palette's optimizer order."""
    from alignsam_diag.plots.style import PALETTE
    from alignsam_diag.store.history import history_optimizer

    def order(history: Path) -> int:  # SGD, SAM, Align-SAM ... as in the palette; unknown ones last
        name = history_optimizer(history)
        return list(PALETTE).index(name) if name in PALETTE else len(PALETTE)

    groups: dict[str, list[Path]] = {}
    for history in sorted(histories, key=order):
        sweep = next((p for p in history.parents if (p / "sweep.h5").exists()), None)
        groups.setdefault(sweep.name if sweep else "runs", []).append(history.parent)
    return groups


def _suffix(name: str, groups: dict[str, list[Path]]) -> str:
    return "" if len(groups) == 1 else f"-{name}"


def _runs(found: Found, out: Path) -> Iterator[Artifact]:
    from alignsam_diag.store.tracking import read_logs

    from .figures import history
    from .figures_cosine import cosine_figure, sharpness_figure

    groups = _groups(found.of("history"))
    for name, runs in groups.items():
        suffix, sources = _suffix(name, groups), [run / "history.h5" for run in runs]
        yield _figure(f"Training curves{suffix.replace('-', ' — ')}", "Loss and accuracy per epoch (solid: test, "
                      "dashed: train).", sources, out, f"training-curves{suffix}",
                      lambda path: history(runs, out=path))
        logs = [read_logs(source) for source in sources]
        cosine = [run for run, log in zip(runs, logs) if "cosine" in log and len(log["cosine"])]
        if cosine:
            yield _figure(f"Figure 1 — gradient alignment during training{suffix.replace('-', ' — ')}",
                          "cosine_b, cosine_a and change (appendix A.3) logged every few steps, moving average "
                          "over one epoch with the raw points faint.", [r / "history.h5" for r in cosine], out,
                          f"figure1-cosine-tracked{suffix}", lambda path: cosine_figure(cosine, out=path))
        sharp = [run for run, log in zip(runs, logs) if "sharpness" in log and len(log["sharpness"])]
        if sharp:
            yield _figure(f"Sharpness along training{suffix.replace('-', ' — ')}",
                          "λ_max of the Hessian on fixed training samples against the step, with the edge of "
                          "stability 2/η (dashed).", [r / "history.h5" for r in sharp], out,
                          f"sharpness-trajectory{suffix}", lambda path: sharpness_figure(sharp, out=path))


def _cosines(found: Found, out: Path) -> Iterator[Artifact]:
    from .figures_cosine import cosine_figure

    for file in found.of("cosine"):
        yield _figure("Figure 1 — gradient alignment at the saved checkpoints", "cosine_b, cosine_a and change "
                      "(appendix A.3) of each checkpoint's next step, mean ± std over seeded batch pairs.", [file],
                      out, f"figure1-cosine-{file.stem}", lambda path: cosine_figure([file], out=path))


def _tables(title: str, what: str, sources: list[Path], out: Path, stem: str,
            write: Callable[[Path], list[Path]]) -> Artifact:
    from alignsam_diag.plots.report import Artifact

    return Artifact(title, what, sources, write(out / stem))


def _eigs(found: Found, out: Path) -> Iterator[Artifact]:
    from alignsam_diag.plots.spectrum_table import table10
    from alignsam_diag.plots.style import default_labels
    from alignsam_diag.plots.tables import write_tables
    from alignsam_diag.store.landscape import group_names
    from alignsam_diag.store.spectrum import read_records

    from .figures_spectrum import density

    for file in found.of("eigs"):
        records = list(read_records(file).values())
        labels = default_labels([r.optimizer for r in records], group_names([r.checkpoint for r in records]))
        yield _tables("Table 10 — Hessian eigenvalues", "λ1 and λ1/λ2 … λ1/λk per checkpoint (Lanczos), with the "
                      "products spent and the trace where estimated.", [file], out, f"table10-{file.stem}",
                      lambda stem: write_tables(table10(records, labels), stem))
        if any(r.density is not None for r in records):
            yield _figure("Hessian spectral density", "Stochastic Lanczos quadrature density per checkpoint "
                          "(log scale), top eigenvalues dotted.", [file], out, f"density-{file.stem}",
                          lambda path: density([file], out=path))


def _landscapes(found: Found, out: Path) -> Iterator[Artifact]:
    from alignsam_diag.store.landscape import read_landscape

    from .figures_landscape import landscape_figure

    for file in found.of("landscape"):
        one_d = read_landscape(file).groups[0].surface.grid.dim == 1
        kinds = [("curve", "Loss along the line", "figure-landscape")] if one_d else [
            ("contour", "Figure 3 — loss landscapes (contours)", "figure3-landscape"),
            ("surface", "Figure 4 — loss landscapes (3-D)", "figure4-landscape")]
        for kind, title, stem in kinds:
            yield _figure(title, "Training loss around each checkpoint along shared filter-normalised random "
                          "directions, one colour scale for all panels.", [file], out, f"{stem}-{file.stem}",
                          lambda path, kind=kind: landscape_figure(file, kind=kind, out=path))


def _sweeps(found: Found, out: Path) -> Iterator[Artifact]:
    from alignsam_diag.store.sweep import read_summary

    from .figures_sweep import aux_batch, lambda_figure

    for file in found.of("sweep"):
        summary = read_summary(file)
        if not summary.finished():
            continue
        name = file.parent.name
        def varied(option: str) -> bool:  # several values among the runs that take the option
            return len([v for v in summary.distinct(option) if v is not None]) > 1

        if varied("hyper.lam"):
            yield _figure(f"Figure 2 — accuracy against λ ({name})", "Test accuracy of Align-SAM against its "
                          "trade-off λ, mean ± std over seeds; runs without λ as baselines.", [file], out,
                          f"figure2-lambda-{name}", lambda path: lambda_figure(file, out=path))
        if varied("aux_batch_size"):
            stem = f"table9-aux-batch-{name}"
            artifact = _figure(f"Table 9 — auxiliary batch size ({name})", "|B^a| against accuracy and training "
                               "time per epoch and in total.", [file], out, stem,
                               lambda path: aux_batch(file, out=path))
            artifact.files += [out / f"{stem}.md", out / f"{stem}.tex"]
            yield artifact


def _robustness(found: Found, out: Path) -> Iterator[Artifact]:
    from alignsam_diag.plots.report import Artifact

    from .figures_robustness import robustness_table

    for file in found.of("robustness"):
        files = [out / f"table6-{file.stem}.{fmt}" for fmt in ("md", "tex")]
        for path in files:
            robustness_table(file, out=path)
        yield Artifact("Table 6 — robustness", "Clean and corrupted top-1/top-5 accuracy per checkpoint (mean over "
                       "corruptions × severities), with mCE where defined.", [file], files)


def _sharpness(found: Found, out: Path) -> Iterator[Artifact]:
    from .figures_sharpness_radius import sharpness_radius

    for file in found.of("sharpness"):
        yield _figure("Sharpness against the radius", "Worst-case (projected ascent) and average-case (random draws) "
                      "loss increase L(w + δ) − L(w) in a ball of radius ρ, per checkpoint.", [file], out,
                      f"sharpness-radius-{file.stem}", lambda path: sharpness_radius([file], out=path))


#: What ``figures all`` draws, in the report's order.
RENDERERS: list[Callable[[Found, Path], Iterator[Artifact]]] = [_runs, _cosines, _sweeps, _eigs, _landscapes, _sharpness, _robustness]


def figures_all(
    inputs: Annotated[list[Path], typer.Argument(help="Result files, run folders, or folders to search for them "
                                                      "(recursively), e.g. a demo's output folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the figures (PNG and PDF), tables (Markdown and "
                                                    "LaTeX) and REPORT.md.")] = Path("figures"),
) -> None:
    """Every figure and table the inputs hold — Figure 1 (gradient cosines), Figure 2 (accuracy
    vs λ), Figures 3–4 (landscapes), Tables 6, 9 and 10, spectral densities, sharpness, training
    curves — each as its own `figures` subcommand would draw it, plus OUT/REPORT.md."""
    from alignsam_diag.files import check_writable
    from alignsam_diag.plots.report import write_report
    from alignsam_diag.store.discover import find_results

    check_writable(out, folder=True)
    found = find_results(inputs)
    if not found.files:
        raise UserError(f"no results of alignsam-diag in {', '.join(map(str, inputs))}; give result files or "
                        "folders that hold them (train, eigs, landscape, cosine, robustness, sharpness, sweep).")
    out.mkdir(parents=True, exist_ok=True)
    artifacts = [artifact for render in RENDERERS for artifact in render(found, out)]
    command = " ".join(["alignsam-diag figures all", *map(str, inputs), "--out", str(out)])
    typer.echo(write_report(artifacts, out, command, found.skipped))
