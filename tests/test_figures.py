"""Figures a paper can use: one colour per recorded optimizer in every figure kind whatever the
inputs' order, labels that name the optimizer (or --labels, counted), `--out` as a file or a
folder for every figures command, landscape levels that resolve the basin, contour lines that
show on white, readable log colour bars, and blue = better for loss and accuracy."""

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex, to_rgb

import cli.figures
import cli.figures_landscape
import cli.figures_spectrum
from alignsam_diag.analysis.density import SpectralDensity
from alignsam_diag.analysis.lanczos import Spectrum
from alignsam_diag.data import DataSpec
from alignsam_diag.models import build_model
from alignsam_diag.models.checkpoint import save_checkpoint
from alignsam_diag.optim import OPTIMIZERS
from alignsam_diag.plots.landscape import log_ticks, plot_landscapes
from alignsam_diag.plots.style import DISPLAY_NAMES, FALLBACK, PALETTE, colours, default_labels
from alignsam_diag.store.history import write_history
from alignsam_diag.store.landscape import Grid, LandscapeFile, StoredSurface, Surface, read_landscape, write_landscape
from alignsam_diag.store.spectrum import EigsRecord, read_records, write_record
from conftest import SMALL_CNN, assert_one_clear_line, invoke


def bowl(width: float, dim: int = 2, n: int = 9) -> Surface:
    """Loss 0.4 at the origin rising to ~10.7 (a basin of the given width); accuracy falling from 98 %."""
    x = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(x, x) if dim == 2 else (x, 0 * x)
    r2 = (X**2 + Y**2) / width**2
    surface = Surface.empty(Grid(x, x if dim == 2 else None))
    cells = np.arange(surface.grid.size)
    surface.record(cells, (0.4 + 10.3 * (1 - np.exp(-r2))).ravel(), (0.1 + 0.88 * np.exp(-r2)).ravel())
    return surface


RUNS = {"b-run": "sgd", "a-run": "sam"}  # run folder -> recorded optimizer; alphabetical order is the reverse


def history_columns(epochs: int = 3) -> dict[str, np.ndarray]:
    """A falling loss and a rising accuracy over ``epochs`` epochs, as ``train`` stores them."""
    e = np.arange(1.0, epochs + 1)
    return {"epoch": e, "train_loss": 2 / e, "train_acc": 1 - 0.5 / e, "test_loss": 2.1 / e, "test_acc": 1 - 0.6 / e,
            "lr": 0 * e + 0.1, "epoch_seconds": 0 * e + 1}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Stored results of two runs (SGD in folder b-run, SAM in a-run), written by the store writers:
    history.h5 per run, landscape files (2-D, 1-D) with the groups in both orders, an eigs file."""
    root = tmp_path_factory.mktemp("results")
    for run, optimizer in RUNS.items():
        write_history(root / run / "history.h5", history_columns(), {"optimizer": optimizer, "epochs": 3})
    groups = {run: [StoredSurface(f"{run}-last", f"{run}/last.pt", bowl(0.3 + 0.3 * i, dim), optimizer=optimizer)
                    for i, (run, optimizer) in enumerate(RUNS.items())] for run, dim in (("2d", 2), ("1d", 1))}
    for name, stored in groups.items():
        write_landscape(root / f"plane-{name}.h5", LandscapeFile({"split": "train"}, stored))
        write_landscape(root / f"reversed-{name}.h5", LandscapeFile({"split": "train"}, stored[::-1]))
    grid = np.linspace(-1, 10, 50)
    for run, optimizer in [("sgd", "sgd"), ("sam", "sam"), ("align-sam", "align-sam")]:  # not alphabetical
        density = SpectralDensity(np.zeros((2, 5)), np.zeros((2, 5)), grid, np.exp(-grid**2), 0.5, 10, 1.0)
        spectrum = Spectrum(np.array([5.0, 3.0]), np.zeros(2), None, 10, 1.0, True, "LM", 1e-3)
        write_record(root / "eigs.h5", EigsRecord(f"runs/{run}/last.pt", {}, ["w"], 10, spectrum=spectrum,
                                                  density=density, optimizer=optimizer))
    return root


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure a figures command saves, in order (``save_figure`` still writes each one)."""
    figures = []
    for module in (cli.figures, cli.figures_landscape, cli.figures_spectrum):
        def spy(fig, path, _save=module.save_figure):
            figures.append(fig)
            return _save(fig, path)
        monkeypatch.setattr(module, "save_figure", spy)
    return figures


def line_colours(ax) -> dict[str, str]:
    """Label -> colour (hex) of an axes' labelled lines."""
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def title_colours(fig) -> dict[str, str]:
    return {ax.get_title(): to_hex(ax.title.get_color()) for ax in fig.axes if ax.get_title()}


def luminance(colour) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


EXPECTED = {"SGD": PALETTE["sgd"], "SAM": PALETTE["sam"]}


def test_every_optimizer_has_its_own_colour_and_name():
    assert set(PALETTE) == set(OPTIMIZERS) == set(DISPLAY_NAMES)
    assert len(set(PALETTE.values())) == len(PALETTE) and not set(FALLBACK) & set(PALETTE.values())
    assert colours(["sam", None, "mystery", "sgd", None, "mystery"]) == [
        PALETTE["sam"], FALLBACK[0], FALLBACK[1], PALETTE["sgd"], FALLBACK[2], FALLBACK[1]]
    assert default_labels(["align-sam", "sam", "sam", None], ["a", "run-a", "run-b", "third"]) == [
        "Align-SAM", "SAM (run-a)", "SAM (run-b)", "third"]


@pytest.mark.parametrize("order", [1, -1])
def test_history_colours_and_labels_follow_the_recorded_optimizer(results, drawn, tmp_path, order):
    runs = [results / run for run in RUNS][::order]
    made = invoke("figures", "history", *runs, "--out", tmp_path / "h.png")
    assert made.exit_code == 0, made.stderr
    loss_ax, acc_ax = drawn[0].axes
    assert line_colours(loss_ax) == {f"{label} ({split})": colour for label, colour in EXPECTED.items()
                                     for split in ("test", "train")}
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [*["SGD", "SAM"][::order], "test", "train"]


@pytest.mark.parametrize("order", ["plane", "reversed"])
def test_landscape_colours_and_labels_follow_the_recorded_optimizer(results, drawn, tmp_path, order):
    assert invoke("figures", "landscape", results / f"{order}-2d.h5", "--out", tmp_path).exit_code == 0
    assert invoke("figures", "landscape", results / f"{order}-1d.h5", "--out", tmp_path).exit_code == 0
    panels, curves = drawn
    assert title_colours(panels) == EXPECTED  # panel titles: the optimizer's name, in its colour
    assert line_colours(curves.axes[0]) == EXPECTED


def test_density_keeps_the_order_given_to_eigs_and_the_colours(results, drawn, tmp_path):
    assert list(read_records(results / "eigs.h5")) == [f"runs/{r}/last.pt" for r in ("sgd", "sam", "align-sam")]
    assert invoke("figures", "density", results / "eigs.h5", "--out", tmp_path).exit_code == 0
    chosen = invoke("figures", "density", results / "eigs.h5", "--checkpoint", "runs/align-sam/last.pt",
                    "--checkpoint", "runs/sgd/last.pt", "--labels", "Align,Plain", "--out", tmp_path / "d.pdf")
    assert chosen.exit_code == 0, chosen.stderr
    every, two = (fig.axes[0] for fig in drawn)
    assert [t.get_text() for t in every.get_legend().get_texts()] == ["SGD", "SAM", "Align-SAM",
                                                                     "top-k eigenvalues (Lanczos)"]
    assert line_colours(every) == {"SGD": PALETTE["sgd"], "SAM": PALETTE["sam"], "Align-SAM": PALETTE["align-sam"]}
    assert line_colours(two) == {"Align": PALETTE["align-sam"], "Plain": PALETTE["sgd"]}


def test_runs_of_one_optimizer_or_of_none_are_told_apart(results, drawn, tmp_path):
    twin, unknown = tmp_path / "sam-b", tmp_path / "stranger"
    write_history(twin / "history.h5", history_columns(2), {"optimizer": "sam"})
    write_history(unknown / "history.h5", history_columns(2), {})  # a run that recorded no optimizer
    made = invoke("figures", "history", results / "a-run", twin, unknown, "--out", tmp_path)
    assert made.exit_code == 0, made.stderr
    assert (tmp_path / "history-a-run-sam-b-stranger.png").stat().st_size > 1000
    colours_by_label = line_colours(drawn[0].axes[0])
    assert colours_by_label["SAM (a-run) (test)"] == colours_by_label["SAM (sam-b) (test)"] == PALETTE["sam"]
    assert colours_by_label["stranger (test)"] == FALLBACK[0]


def test_labels_replace_the_defaults_and_are_counted(results, drawn, tmp_path):
    made = invoke("figures", "landscape", results / "plane-2d.h5", "--labels", "Plain, Sharp", "--out", tmp_path)
    assert made.exit_code == 0, made.stderr
    assert title_colours(drawn[0]) == {"Plain": PALETTE["sgd"], "Sharp": PALETTE["sam"]}
    runs = [results / run for run in RUNS]
    for args in (["history", *runs], ["landscape", results / "plane-2d.h5"], ["density", results / "eigs.h5"]):
        wrong = invoke("figures", *args, "--labels", "only-one", "--out", tmp_path / "wrong")
        assert_one_clear_line(wrong, "--labels gives 1 label(s) for")
    assert_one_clear_line(invoke("figures", "history", *runs, "--labels", "A,A", "--out", tmp_path / "x"),
                          "different from the others")
    assert not (tmp_path / "wrong").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["history", "landscape", "density"])
def test_out_is_a_figure_file_or_a_folder(results, tmp_path, command):
    args, default_name = {
        "history": ([results / run for run in RUNS], "history-b-run-a-run.png"),
        "landscape": ([results / "plane-2d.h5", "--kind", "heatmap"], "plane-2d-heatmap-log.png"),
        "density": ([results / "eigs.h5"], "eigs-density.png"),
    }[command]
    for out, written in ((tmp_path / "fig3.png", tmp_path / "fig3.png"),
                         (tmp_path / "paper" / "fig3.pdf", tmp_path / "paper" / "fig3.pdf"),
                         (tmp_path / "figs", tmp_path / "figs" / default_name),
                         (tmp_path / "v1.2", tmp_path / "v1.2" / default_name)):
        made = invoke("figures", command, *args, "--out", out)
        assert made.exit_code == 0, made.stderr
        assert made.stdout.strip() == str(written) and written.is_file() and written.stat().st_size > 1000
    pdf = invoke("figures", command, *args, "--format", "pdf", "--out", tmp_path / "vector")
    assert pdf.exit_code == 0 and (tmp_path / "vector" / default_name.replace(".png", ".pdf")).is_file()
    assert_one_clear_line(invoke("figures", command, *args, "--out", tmp_path / "fig.svg"), "as .png or .pdf")
    assert_one_clear_line(invoke("figures", command, *args, "--format", "pdf", "--out", tmp_path / "f.png"),
                          "--format pdf contradicts --out")
    assert_one_clear_line(invoke("figures", command, *args, "--format", "svg", "--out", tmp_path), "--format svg")
    (tmp_path / "taken.png").mkdir()
    assert_one_clear_line(invoke("figures", command, *args, "--out", tmp_path / "taken.png"), "is a folder")


def test_default_levels_resolve_the_basin_and_show_on_white():
    surfaces = {"SGD": bowl(0.3, n=51), "Align-SAM": bowl(0.8, n=51)}  # basin (loss < 1.4) in a plane rising to 10.7
    fig = plot_landscapes(surfaces, kind="contour", optimizers=["sgd", "align-sam"])
    for contours in (c for ax in fig.axes[:2] for c in ax.collections):
        assert (np.asarray(contours.levels) < 1.4).sum() >= 8  # evenly spaced linear levels: 3
        assert max(luminance(c) for c in contours.get_edgecolor()) < 0.55  # no pale line on white
    fig.draw_without_rendering()
    bar = fig.axes[-1]
    labels = [t.get_text() for t in bar.yaxis.get_ticklabels() if t.get_text()]
    assert bar.get_ylabel() == "train loss" and len(labels) >= 4, labels
    assert labels == ["0.5", "1", "2", "5", "10"]


@pytest.mark.parametrize("low, high", [(0.4, 10.7), (0.05, 16.05), (1e-3, 30.0), (0.9, 1.1), (2.0, 2.5)])
def test_log_ticks_give_at_least_four_labels_inside_the_range(low, high):
    ticks = log_ticks(low, high)
    assert len(ticks) >= 4 and ticks.min() >= low * 0.999 and ticks.max() <= high * 1.001


@pytest.mark.parametrize("metric", ["loss", "acc"])
def test_blue_means_better_for_loss_and_accuracy(metric):
    fig = plot_landscapes({"SGD": bowl(0.5)}, kind="heatmap", metric=metric)
    mesh = fig.axes[0].collections[0]
    low, high = mesh.norm.vmin, mesh.norm.vmax
    best, worst = (low, high) if metric == "loss" else (high, low)
    blue, red = mesh.cmap(mesh.norm(best)), mesh.cmap(mesh.norm(worst))
    assert blue[2] > blue[0] and red[0] > red[2]
    assert (metric == "acc") == (high > 90)  # accuracy in percent, its best end blue


def test_landscape_and_eigs_record_the_checkpoints_optimizer(tmp_path, drawn):
    paths = []
    for name, optimizer in (("align", {"name": "align-sam"}), ("stranger", None)):
        torch.manual_seed(0)
        payload = {"state_dict": build_model(SMALL_CNN).state_dict(), "model": SMALL_CNN.to_dict(),
                   "data": DataSpec("digits").to_dict(), **({"optimizer": optimizer} if optimizer else {})}
        save_checkpoint(tmp_path / name / "last.pt", payload)
        paths.append(tmp_path / name / "last.pt")
    fast = ["--samples", "16", "--batch-size", "16", "--device", "cpu"]
    surface = invoke("landscape", *paths, "--dim", "1", "--grid", "3", "--points-per-pass", "1", *fast,
                     "--out", tmp_path / "line.h5", "--quiet")
    assert surface.exit_code == 0, surface.stderr
    assert [g.optimizer for g in read_landscape(tmp_path / "line.h5").groups] == ["align-sam", None]
    eigs = invoke("eigs", *paths, "--k", "1", *fast, "--out", tmp_path / "eigs.h5", "--quiet")
    assert eigs.exit_code == 0, eigs.stderr
    assert [r.optimizer for r in read_records(tmp_path / "eigs.h5").values()] == ["align-sam", None]
    made = invoke("figures", "landscape", tmp_path / "line.h5", "--out", tmp_path)
    assert made.exit_code == 0, made.stderr
    assert line_colours(drawn[0].axes[0]) == {"Align-SAM": PALETTE["align-sam"], "stranger-last": FALLBACK[0]}
