"""`alignsam-diag sharpness` and `figures sharpness-radius` as a user runs them: JSON rows and their
keys for several radii, the values against the library on the same samples, the table, rows
resumed from --out and added to it, refused settings and bad inputs in one line, the figure."""

import json

import h5py
import pytest

from alignsam_diag.analysis.sharpness_core import SharpnessOptions
from alignsam_diag.analysis.sharpness_worst import worst_case_sharpness
from alignsam_diag.inputs import load_inputs
from conftest import assert_one_clear_line, invoke

FAST = ["--samples", "96", "--batch-size", "64", "--m", "48", "--steps", "5", "--draws", "4", "--device", "cpu",
        "--quiet"]
KEYS = {"checkpoint", "measure", "norm", "adaptive", "rho", "m", "loss_increase", "error_increase", "loss_stderr",
        "error_stderr", "ascent_steps", "draws", "delta_norm", "samples", "groups"}


@pytest.fixture(scope="module")
def results(checkpoints, tmp_path_factory):
    """Both checkpoints at ρ = 0.02, 0.05 written to an --out file, as JSON."""
    out = tmp_path_factory.mktemp("sharpness") / "sharpness.h5"
    run = invoke("sharpness", *checkpoints, *FAST, "--rho", "0.02,0.05", "--out", out, "--json")
    assert run.exit_code == 0, run.stderr
    return out, json.loads(run.stdout)


def test_json_rows_for_several_radii_match_the_library(checkpoints, results):
    out, rows = results
    assert len(rows) == 2 * 2 * 2  # checkpoints × measures × radii
    assert all(KEYS <= set(r) for r in rows)
    assert [(r["checkpoint"], r["measure"], r["rho"]) for r in rows[:4]] == [
        (str(checkpoints[0]), m, rho) for m in ("worst", "average") for rho in (0.02, 0.05)]
    for r in rows:
        assert (r["norm"], r["adaptive"], r["m"], r["samples"], r["groups"]) == ("l2", False, 48, 96, 2)
        if r["measure"] == "worst":
            assert r["ascent_steps"] == 2 * 5 and 0 < r["delta_norm"] <= r["rho"] * (1 + 1e-6)
            assert r["loss_increase"] > 0
        else:
            assert r["draws"] == 4 and r["delta_norm"] is None and r["loss_stderr"] > 0
    inputs = load_inputs(checkpoints[1], samples=96, batch_size=64)
    direct = worst_case_sharpness(inputs.checkpoint.model, inputs.batches, 0.05,
                                  SharpnessOptions(m=48, steps=5)).estimate
    row = next(r for r in rows if (r["checkpoint"], r["measure"], r["rho"]) == (str(checkpoints[1]), "worst", 0.05))
    assert row["loss_increase"] == pytest.approx(direct.loss_increase, rel=1e-6)
    assert row["error_increase"] == pytest.approx(direct.error_increase, abs=1e-12)


def test_rows_are_read_back_added_to_and_shown_as_a_table(checkpoints, results):
    out, rows = results
    again = invoke("sharpness", *checkpoints, *FAST, "--rho", "0.02,0.05", "--out", out, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == rows  # nothing recomputed: the stored seconds come back too
    more = invoke("sharpness", checkpoints[0], *FAST, "--rho", "0.05,0.1", "--measure", "worst", "--out", out,
                  "--with-eigs")
    assert more.exit_code == 0, more.stderr
    header, *lines = more.stdout.strip().splitlines()[1:-1]
    assert header.split() == ["checkpoint", "ρ", "worst", "Δloss", "worst", "Δerr", "λ_max", "tr(H)", "±", "s.e."]
    assert len({line.split()[6] for line in lines}) == 1 and float(lines[0].split()[6]) > 0  # one λ_max per checkpoint
    assert [line.split()[:2] for line in lines] == [[str(checkpoints[0]), "0.05"], [str(checkpoints[0]), "0.1"]]
    stored = next(r for r in rows if (r["checkpoint"], r["measure"], r["rho"]) == (str(checkpoints[0]), "worst", 0.05))
    assert float(lines[0].split()[2]) == pytest.approx(stored["loss_increase"], rel=1e-3)
    with h5py.File(out) as f:
        assert f.attrs["kind"] == "sharpness" and len(f["rows/rho"]) == 9


def test_settings_that_differ_from_the_file_are_refused(checkpoints, results):
    out, _ = results
    assert_one_clear_line(invoke("sharpness", checkpoints[0], *FAST, "--steps", "6", "--out", out), "(steps)")


@pytest.mark.parametrize("args, fragment", [
    (["--rho", "abc"], "--rho abc"), (["--rho", "0.1,-1"], "positive"), (["--rho", "0.1,0.1"], "repeated"),
    (["--measure", "best"], "--measure best"), (["--norm", "l1"], "--norm l1"), (["--m", "0"], "--m 0"),
    (["--steps", "0"], "--steps 0"), (["--bn", "frozen"], "--bn frozen"), (["--draws", "1"], "--draws 1"),
    (["--draws-per-pass", "many"], "--draws-per-pass many"), (["--params", "nothing*"], "--params"),
    (["--restarts", "0"], "--restarts 0"),
])
def test_bad_inputs_are_one_clear_line(checkpoints, args, fragment):
    assert_one_clear_line(invoke("sharpness", checkpoints[0], "--samples", "32", "--device", "cpu", *args), fragment)


def test_sharpness_radius_figure(results, tmp_path):
    out, _ = results
    figure = tmp_path / "radius.png"
    made = invoke("figures", "sharpness-radius", out, "--out", figure, "--labels", "SGD,SAM")
    assert made.exit_code == 0, made.stderr
    assert figure.stat().st_size > 10_000
    pdf = invoke("figures", "sharpness-radius", out, "--out", tmp_path, "--format", "pdf", "--quantity", "error")
    assert pdf.exit_code == 0, pdf.stderr
    assert (tmp_path / "sharpness-sharpness-radius.pdf").stat().st_size > 5_000
    assert_one_clear_line(invoke("figures", "sharpness-radius", out, "--out", figure, "--labels", "SGD"), "--labels")
    assert_one_clear_line(invoke("figures", "sharpness-radius", out, "--quantity", "gap"), "--quantity gap")
    assert_one_clear_line(invoke("figures", "sharpness-radius", tmp_path / "none.h5"), "no such file")
