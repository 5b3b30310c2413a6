"""`figures cosine` (Figure 1) and `figures sharpness` from stored results: PNG and PDF render, one
colour per recorded optimizer, labels from the optimizers unless --labels, a cosine file's means
with std bands, a step log's moving average over its raw points, change of the curves, the 2/η
line, and one-line errors for inputs without such results."""

import numpy as np
import pytest
from matplotlib.colors import to_hex

import cli.figures_cosine
from alignsam_diag.plots.cosine import moving_average
from alignsam_diag.plots.style import PALETTE
from alignsam_diag.store.alignment import QUANTITIES, CosineRecord, write_record
from alignsam_diag.store.history import write_history
from alignsam_diag.store.tracking import StepLog
from conftest import assert_one_clear_line, invoke

RUNS = {"sam": "sam", "align": "align-sam"}  # run folder -> recorded optimizer
STEPS_PER_EPOCH, EVERY = 20, 2


def columns(epochs: int = 2):
    e = np.arange(1.0, epochs + 1)
    return {"epoch": e, "train_loss": 1 / e, "train_acc": 0 * e + 0.5, "test_loss": 1 / e, "test_acc": 0 * e + 0.5,
            "lr": 0 * e + 0.1, "epoch_seconds": 0 * e + 1}


def logs(shift: float) -> dict[str, StepLog]:
    step = np.arange(0, 2 * STEPS_PER_EPOCH, EVERY)
    rng = np.random.default_rng(int(10 * shift))
    cos_b = 0.3 + shift + 0.05 * rng.standard_normal(len(step))
    cos_a = cos_b + 0.05
    values = {"cosine_b": cos_b, "cosine_a": cos_a, "change": (cos_a - cos_b) / cos_a,
              **{q: np.ones(len(step)) for q in QUANTITIES[3:]}}
    lr = 0.1 * (0.5 + 0.5 * np.cos(np.pi * step / (2 * STEPS_PER_EPOCH)))
    common = {"step": step, "epoch": step / STEPS_PER_EPOCH, "lr": lr}
    return {"cosine": StepLog({**common, **values}, EVERY, STEPS_PER_EPOCH, {"rho": 0.05}),
            "sharpness": StepLog({**common, "lambda_max": 5 + step / 4.0, "residual": 1e-3 + 0 * lr,
                                  "products": np.full(len(step), 5), "converged": step != 4,
                                  "seconds": 0 * lr}, EVERY, STEPS_PER_EPOCH)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two runs' history.h5 with both step logs, and a cosine file with their two checkpoints each."""
    root = tmp_path_factory.mktemp("figures")
    for i, (run, optimizer) in enumerate(RUNS.items()):
        write_history(root / run / "history.h5", columns(), {"optimizer": optimizer}, logs(0.1 * i))
        for epoch in (1, 2):
            values = np.random.default_rng(epoch).uniform(0.2, 0.4, (3, len(QUANTITIES)))
            write_record(root / "cosine.h5", CosineRecord(f"{root}/{run}/epoch_00{epoch}.pt",
                                                          {"optimizer": optimizer, "rho": 0.05}, values, 5, 1.0,
                                                          epoch, epoch * 20, optimizer))
    write_history(root / "untracked" / "history.h5", columns(), {"optimizer": "sgd"})
    return root


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure the two commands save, in order (still written)."""
    figures = []

    def spy(fig, path, _save=cli.figures_cosine.save_figure):
        figures.append(fig)
        return _save(fig, path)
    monkeypatch.setattr(cli.figures_cosine, "save_figure", spy)
    return figures


def labelled(ax):
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_cosine_figure_from_step_logs_and_from_a_cosine_file(results, drawn, tmp_path, fmt):
    runs = [results / run for run in RUNS]
    made = invoke("figures", "cosine", *runs, "--out", tmp_path / f"steps.{fmt}")
    assert made.exit_code == 0, made.stderr
    assert (tmp_path / f"steps.{fmt}").stat().st_size > 10_000
    steps = drawn[-1]
    assert [ax.get_title()[:3] for ax in steps.axes] == ["(a)", "(b)", "(c)"]
    assert labelled(steps.axes[0]) == {"SAM": PALETTE["sam"], "Align-SAM": PALETTE["align-sam"]}
    sam_curve = next(line for line in steps.axes[0].get_lines() if line.get_label() == "SAM")
    raw = logs(0.0)["cosine"].columns["cosine_b"]
    np.testing.assert_allclose(sam_curve.get_ydata(), moving_average(raw, STEPS_PER_EPOCH // EVERY))
    sam_change = next(line for line in steps.axes[2].get_lines() if line.get_label() == "SAM")
    smooth_a = moving_average(logs(0.0)["cosine"].columns["cosine_a"], STEPS_PER_EPOCH // EVERY)
    np.testing.assert_allclose(sam_change.get_ydata(), (smooth_a - sam_curve.get_ydata()) / smooth_a)

    made = invoke("figures", "cosine", results / "cosine.h5", "--format", fmt, "--out", tmp_path)
    assert made.exit_code == 0, made.stderr
    assert (tmp_path / f"cosine-cosine.{fmt}").stat().st_size > 10_000
    per_checkpoint = drawn[-1].axes[0]
    assert labelled(per_checkpoint) == {"SAM": PALETTE["sam"], "Align-SAM": PALETTE["align-sam"]}
    assert len(per_checkpoint.collections) == 2  # one std band per run
    line = next(line for line in per_checkpoint.get_lines() if line.get_label() == "SAM")
    assert line.get_xdata().tolist() == [1.0, 2.0]
    means = [np.random.default_rng(e).uniform(0.2, 0.4, (3, len(QUANTITIES)))[:, 0].mean() for e in (1, 2)]
    np.testing.assert_allclose(line.get_ydata(), means)


def test_cosine_labels_mixed_inputs_and_another_variants_step(results, drawn, tmp_path):
    other = tmp_path / "measured.h5"
    write_record(other, CosineRecord(f"{results}/sam/epoch_001.pt", {"optimizer": "align-sam"},
                                     np.full((2, len(QUANTITIES)), 0.3), 3, 1.0, 1, 20, "sam"))
    made = invoke("figures", "cosine", results / "sam", other, "--out", tmp_path / "mixed.png")
    assert made.exit_code == 0, made.stderr
    assert labelled(drawn[-1].axes[0]) == {"SAM": PALETTE["sam"], "SAM (Align-SAM step)": PALETTE["sam"]}
    made = invoke("figures", "cosine", results / "sam", results / "align", "--labels", "A,B", "--out", tmp_path)
    assert made.exit_code == 0 and (tmp_path / "cosine-sam-align.png").is_file()
    assert labelled(drawn[-1].axes[0]) == {"A": PALETTE["sam"], "B": PALETTE["align-sam"]}


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_sharpness_figure_with_the_edge_of_stability(results, drawn, tmp_path, fmt):
    made = invoke("figures", "sharpness", *(results / run for run in RUNS), "--out", tmp_path / f"s.{fmt}")
    assert made.exit_code == 0, made.stderr
    assert (tmp_path / f"s.{fmt}").stat().st_size > 10_000
    ax = drawn[-1].axes[0]
    assert ax.get_yscale() == "log"
    assert labelled(ax) == {"SAM": PALETTE["sam"], "Align-SAM": PALETTE["align-sam"]}
    edge = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(edge) == 1  # the runs share their learning rates: one 2/η line
    np.testing.assert_allclose(edge[0].get_ydata(), 2 / logs(0.0)["sharpness"].columns["lr"])
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert [len(line.get_xdata()) for line in hollow] == [1, 1]  # the unconverged step 4


def test_inputs_without_such_results_are_one_clear_line(results, tmp_path):
    assert_one_clear_line(invoke("figures", "cosine", results / "untracked", "--out", tmp_path),
                          "holds no cosine log; train with --track-cosine-every N")
    assert_one_clear_line(invoke("figures", "sharpness", results / "untracked", "--out", tmp_path),
                          "holds no sharpness log")
    assert_one_clear_line(invoke("figures", "sharpness", results / "cosine.h5", "--out", tmp_path),
                          "not a history result file")
    assert_one_clear_line(invoke("figures", "cosine", results / "sam", "--window", "0", "--out", tmp_path),
                          "--window 0.0: must be a positive number")
    assert_one_clear_line(invoke("figures", "cosine", results / "sam", "--labels", "one,two", "--out", tmp_path),
                          "--labels gives 2 label(s) for 1 run(s)")
    assert not list(tmp_path.glob("*.png"))


def test_moving_average_is_centred_and_cut_at_the_ends():
    values = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    np.testing.assert_allclose(moving_average(values, 3), [1.5, 1.5, 3.0, 4.5, 4.5])
    np.testing.assert_allclose(moving_average(values, 1)[[0, 1, 3, 4]], [1, 2, 4, 5])
