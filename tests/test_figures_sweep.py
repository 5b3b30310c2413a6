"""Figure 2 (accuracy against λ) and Table 9 (|B^a| against accuracy and time) from small sweep
summaries written here: the plotted points, error bars and baselines are the means and sample
standard deviations of the numbers written (computed in the test), colours follow the optimizer,
the table's rows are the hand-written ones, and the files land where --out says."""

import math
import statistics

import numpy as np
import pytest
from matplotlib.colors import to_hex

import cli.figures_sweep
from alignsam_diag.plots.style import PALETTE
from alignsam_diag.plots.sweep import aux_batch_table, plot_lambda
from alignsam_diag.plots.tables import to_markdown
from alignsam_diag.store.history import write_history
from alignsam_diag.store.sweep import SweepRecord, SweepSummary, read_summary, write_summary
from conftest import assert_one_clear_line, invoke


def record(optimizer, seed, acc, seconds=1.0, lam=None, aux=None, epochs=2, keys=("hyper.lam",), status="finished"):
    """A finished run as the sweep writes it; ``keys``: the swept options besides optimizer and seed."""
    config = {"optimizer": optimizer, "epochs": epochs, "aux_batch_size": aux, "seed": seed,
              "hyper": {"rho": 0.05, **({"lam": lam} if lam is not None else {})}}
    options = {"hyper.lam": lam, "aux_batch_size": aux, "epochs": epochs}
    values = {"optimizer": optimizer, "seed": seed, **{k: options[k] for k in keys}}
    group = ",".join(f"{k}={v}" for k, v in sorted(values.items()) if k != "seed")
    return SweepRecord(name=f"{group},seed={seed}", group=group, run_dir=f"runs/{group},seed={seed}", values=values,
                       config=config, optimizer=optimizer, seed=seed, epochs=epochs, train_loss=0.5,
                       train_acc=acc + 0.05, test_loss=0.6, test_acc=acc, epoch_seconds=seconds,
                       total_seconds=epochs * seconds, status=status)


LAMBDA = [record("align-sam", 0, 0.80, lam=0.5), record("align-sam", 1, 0.84, lam=0.5),
          record("align-sam", 0, 0.90, lam=2.0), record("align-sam", 1, 0.86, lam=2.0),
          record("align-sam", 0, 0.70, lam=4.0), record("align-sam", 1, math.nan, lam=4.0, status="diverged"),
          record("sam", 0, 0.85), record("sam", 1, 0.87)]
AUX_KEYS = ("aux_batch_size", "epochs")
AUX = [record("sam", 0, 0.85, 1.0, keys=AUX_KEYS), record("sam", 1, 0.87, 1.2, keys=AUX_KEYS),
       record("align-sam", 0, 0.86, 1.4, lam=2.0, aux=8, keys=AUX_KEYS),
       record("align-sam", 1, 0.88, 1.6, lam=2.0, aux=8, keys=AUX_KEYS),
       record("align-sam", 0, 0.90, 2.0, lam=2.0, aux=32, keys=AUX_KEYS),
       record("align-sam", 1, 0.88, 2.2, lam=2.0, aux=32, keys=AUX_KEYS)]


def summary_of(records, keys):
    return SweepSummary(sorted(keys), [r.name for r in records], list(records), {"base": {}, "grids": []})


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two sweep folders, ``lam`` and ``aux``, each holding the sweep.h5 of the records above."""
    root = tmp_path_factory.mktemp("sweeps")
    write_summary(root / "lam" / "sweep.h5", summary_of(LAMBDA, ["hyper.lam", "optimizer", "seed"]))
    write_summary(root / "aux" / "sweep.h5", summary_of(AUX, ["aux_batch_size", "epochs", "optimizer", "seed"]))
    return root


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure the sweep figure commands save, in order (still written)."""
    figures = []

    def spy(fig, path, _save=cli.figures_sweep.save_figure):
        figures.append(fig)
        return _save(fig, path)
    monkeypatch.setattr(cli.figures_sweep, "save_figure", spy)
    return figures


def test_the_summary_reads_back_as_written(sweeps):
    stored = read_summary(sweeps / "lam")
    assert stored.keys == ["hyper.lam", "optimizer", "seed"] and stored.planned == [r.name for r in LAMBDA]
    assert stored.records[:5] == LAMBDA[:5] and stored.records[6:] == LAMBDA[6:]
    assert stored.records[5].status == "diverged" and math.isnan(stored.records[5].test_acc)
    assert stored.distinct("hyper.lam") == [0.5, 2.0, 4.0, None]


def test_figure_2_points_error_bars_and_baseline(sweeps, drawn, tmp_path):
    made = invoke("figures", "lambda", sweeps / "lam", "--out", tmp_path)
    assert made.exit_code == 0, made.stderr
    figure = tmp_path / "lam-lambda.png"
    assert made.stdout.strip() == str(figure) and figure.stat().st_size > 1000
    (ax,) = drawn[0].axes
    (curve,) = [line for line in ax.get_lines() if line.get_label() == "Align-SAM"]
    np.testing.assert_allclose(curve.get_xdata(), [0.5, 2.0, 4.0])
    np.testing.assert_allclose(curve.get_ydata(), [82.0, 88.0, 70.0])  # the diverged seed of λ = 4 left out
    assert to_hex(curve.get_color()) == PALETTE["align-sam"]
    (bars,) = ax.containers  # λ = 4 has one seed: no bar
    segments = bars.lines[2][0].get_segments()
    spread = [statistics.stdev([80, 84]), statistics.stdev([90, 86])]
    np.testing.assert_allclose([s[:, 1] for s in segments], [[82 - spread[0], 82 + spread[0]],
                                                             [88 - spread[1], 88 + spread[1]]])
    (sam,) = [line for line in ax.get_lines() if line.get_label() == "SAM"]
    assert np.allclose(sam.get_ydata(), 86.0) and to_hex(sam.get_color()) == PALETTE["sam"]
    (band,) = ax.patches
    low, high = band.get_y(), band.get_y() + band.get_height()  # axhspan: a Rectangle in data y
    np.testing.assert_allclose([low, high], [86 - statistics.stdev([85, 87]), 86 + statistics.stdev([85, 87])])
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "2", "4"]
    assert ax.get_xlabel() == r"trade-off $\lambda$"
    assert ax.get_ylabel() == "test accuracy (%)" and "mean ± std over 1–2 seeds" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Align-SAM", "SAM"]


def test_table_9_rows_and_files(sweeps, drawn, tmp_path):
    table = aux_batch_table(read_summary(sweeps / "aux"))
    assert [row for row in table.rows] == [
        ["SAM", "2", "–", "86.00 ± 1.41", "2", "1.1 s", "2.2 s"],
        ["Align-SAM", "2", "8", "87.00 ± 1.41", "2", "1.5 s", "3 s"],
        ["Align-SAM", "2", "32", "89.00 ± 1.41", "2", "2.1 s", "4.2 s"]]
    assert "| Method | Epochs | \\|B^a\\| | Test accuracy (%) | Seeds | Time / epoch | Total |" in to_markdown(table)

    made = invoke("figures", "aux-batch", sweeps / "aux" / "sweep.h5", "--out", tmp_path / "figs")
    assert made.exit_code == 0, made.stderr
    names = ["aux-aux-batch.md", "aux-aux-batch.tex", "aux-aux-batch.png"]
    assert made.stdout.split() == [str(tmp_path / "figs" / name) for name in names]
    assert (tmp_path / "figs" / "aux-aux-batch.tex").read_text().count(r"\midrule") == 1
    accuracy, seconds = drawn[0].axes
    (curve,) = [line for line in accuracy.get_lines() if line.get_label() == "Align-SAM"]
    np.testing.assert_allclose(curve.get_xdata(), [8, 32])
    np.testing.assert_allclose(curve.get_ydata(), [87.0, 89.0])
    (timing,) = [line for line in seconds.get_lines() if line.get_label() == "Align-SAM"]
    np.testing.assert_allclose(timing.get_ydata(), [1.5, 2.1])
    assert seconds.get_ylabel() == "training time per epoch (s)"

    made = invoke("figures", "aux-batch", sweeps / "aux", "--out", tmp_path / "paper" / "t9.pdf")
    assert made.exit_code == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "paper").iterdir()) == ["t9.md", "t9.pdf", "t9.tex"]
    assert (tmp_path / "paper" / "t9.pdf").read_bytes().startswith(b"%PDF")


def test_labels_and_the_x_option(sweeps, drawn, tmp_path):
    made = invoke("figures", "lambda", sweeps / "lam", "--labels", "Ours,Baseline", "--out", tmp_path / "f.png")
    assert made.exit_code == 0, made.stderr
    assert [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()] == ["Ours", "Baseline"]
    fig = plot_lambda(read_summary(sweeps / "aux"), x="aux_batch_size", metric="train_acc")
    sam, align = (line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_"))
    assert (sam.get_label(), align.get_label()) == ("SAM", "Align-SAM")
    np.testing.assert_allclose(align.get_ydata(), [92.0, 94.0])  # train accuracy = test accuracy + 5 points here


def test_bad_inputs_are_one_line(sweeps, tmp_path):
    lam = sweeps / "lam"
    assert_one_clear_line(invoke("figures", "lambda", lam, "--labels", "one", "--out", tmp_path),
                          "--labels gives 1 label(s) for 2")
    assert_one_clear_line(invoke("figures", "lambda", lam, "--x", "hyper.theta", "--out", tmp_path),
                          "no finished run of the sweep has hyper.theta")
    assert_one_clear_line(invoke("figures", "lambda", lam, "--metric", "speed", "--out", tmp_path), "--metric speed")
    write_history(tmp_path / "run" / "history.h5", {k: [1.0] for k in ("epoch", "train_loss", "train_acc", "test_loss",
                                                                     "test_acc", "lr", "epoch_seconds")}, {})
    assert_one_clear_line(invoke("figures", "aux-batch", tmp_path / "run" / "history.h5", "--out", tmp_path),
                          "not a sweep result file")
    write_summary(tmp_path / "empty" / "sweep.h5", summary_of([], ["seed"]))
    assert_one_clear_line(invoke("figures", "lambda", tmp_path / "empty", "--out", tmp_path),
                          "no finished run yet for Figure 2")
    assert_one_clear_line(invoke("figures", "aux-batch", tmp_path / "nothing", "--out", tmp_path), "no such file")
    assert not list(tmp_path.glob("*.png"))
