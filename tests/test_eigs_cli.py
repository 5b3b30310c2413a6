"""`alignsam-diag eigs` and `figures density` as a user runs them: JSON fields and values, the
Table-10 text layout, the density figure, one-line errors, and resuming after a real kill.

The killed run is a separate process running the installed CLI; the others run the same app in
this process."""

import json
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch
from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.inputs import load_inputs
from conftest import invoke

FAST = ["--samples", "300", "--batch-size", "150", "--device", "cpu"]
EVERY_PART = ["--trace", "--trace-probes", "30", "--density", "--density-steps", "20", "--density-runs", "2",
              "--save-vectors"]


def test_json_values_table10_and_density_figure(tmp_path, checkpoints):
    out = tmp_path / "eigs.h5"
    result = invoke("eigs", *checkpoints, *FAST, *EVERY_PART, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["checkpoint"] for r in report] == [str(p) for p in checkpoints]
    for r, path in zip(report, checkpoints):
        assert {"eigenvalues", "residuals", "hvps", "seconds", "trace"} <= set(r)
        assert len(r["eigenvalues"]) == len(r["residuals"]) == 5 and r["converged"] and r["samples"] == 300
        assert r["trace"]["method"] == "hutch++" and r["trace"]["stderr"] > 0
        inputs = load_inputs(path, samples=300, batch_size=150)
        with HessianOperator(inputs.checkpoint.model, torch.nn.functional.cross_entropy, inputs.batches) as op:
            direct = lanczos(op, k=5, tol=1e-3)
        np.testing.assert_allclose(r["eigenvalues"], direct.eigenvalues, rtol=1e-5)
        assert r["hvps"] == direct.num_products
    with h5py.File(out) as f:
        assert f[str(checkpoints[0]).replace("/", "|")]["eigenvectors"].shape[0] == 5

    text = invoke("eigs", *checkpoints, *FAST, *EVERY_PART, "--out", out)  # same options: read back, nothing recomputed
    assert text.exit_code == 0, text.stderr
    header, *rows = text.stdout.strip().splitlines()
    assert header.split()[:6] == ["checkpoint", "λ1", "λ1/λ2", "λ1/λ3", "λ1/λ4", "λ1/λ5"]
    for line, r in zip(rows, report):
        cells = line.split()
        lam = r["eigenvalues"]
        assert cells[0] == r["checkpoint"] and float(cells[1]) == pytest.approx(lam[0], rel=1e-3)
        assert [float(c) for c in cells[2:6]] == pytest.approx([lam[0] / v for v in lam[1:]], rel=5e-3)
        assert int(cells[6]) == r["hvps"]

    figure = tmp_path / "density.png"
    made = invoke("figures", "density", out, "--out", figure)
    assert made.exit_code == 0, made.stderr
    assert figure.stat().st_size > 10_000


def _saved_products(out, key) -> int:
    """Lanczos products saved in a (possibly still running) eigs output file."""
    with h5py.File(out, "r") as f:
        return f[key]["lanczos_state/coeffs"].shape[1]


def _start_and_wait_for_products(cli, cli_env, args, out, checkpoint, products):
    """Start eigs as a real process (stderr to ``out``.log) and return once it has saved
    ``products`` Lanczos products."""
    with open(out.with_suffix(".log"), "w") as log:
        job = subprocess.Popen([*cli, *map(str, args), "--out", str(out)],
                               env={**cli_env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=log)
    key = str(checkpoint).replace("/", "|")
    deadline, saved = time.monotonic() + 120, 0
    while time.monotonic() < deadline and job.poll() is None and saved < products:
        try:
            saved = _saved_products(out, key)
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    return job, key


def test_resume_after_killing_the_cli(tmp_path, cli, cli_env, checkpoints):
    """A run killed after some products continues from them: the resumed run's total product
    count and eigenvalues are those of an uninterrupted run."""
    args = ["eigs", checkpoints[0], *FAST, "--no-keep-graph", "--tol", "1e-7", "--max-iter", "80", "--json"]
    out = tmp_path / "killed.h5"
    job, key = _start_and_wait_for_products(cli, cli_env, args, out, checkpoints[0], 5)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    saved = _saved_products(out, key)
    assert 5 <= saved

    resumed = invoke(*args, "--out", out)
    assert resumed.exit_code == 0, resumed.stderr
    whole = invoke(*args, "--out", tmp_path / "whole.h5")
    assert whole.exit_code == 0, whole.stderr
    (r,), (w,) = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert saved < w["hvps"] and r["hvps"] == w["hvps"]
    np.testing.assert_allclose(r["eigenvalues"], w["eigenvalues"], rtol=1e-10)
    with h5py.File(out, "r") as f:
        assert "lanczos_state" not in f[key]


def test_sigterm_ends_with_the_rerun_hint(tmp_path, cli, cli_env, checkpoints):
    """SIGTERM (batch schedulers, ``kill``) is an interrupt: exit 130, one line saying the finished
    products are saved, no traceback, and the saved state is readable."""
    args = ["eigs", checkpoints[0], *FAST, "--no-keep-graph", "--tol", "1e-7", "--max-iter", "80"]
    out = tmp_path / "terminated.h5"
    job, key = _start_and_wait_for_products(cli, cli_env, args, out, checkpoints[0], 3)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == 130
    stderr = out.with_suffix(".log").read_text()
    assert "interrupted; finished work is saved" in stderr and "Traceback" not in stderr
    assert _saved_products(out, key) >= 3


BAD = [
    (["--k", "0"], "--k 0"),
    (["--which", "LR"], "--which LR"),
    (["--tol", "-1"], "--tol -1"),
    (["--max-iter", "2"], "--max-iter 2"),
    (["--backend", "scipy"], "--backend scipy"),
    (["--split", "val"], "--split val"),
    (["--params", "nothing.*"], "no trainable parameter matches"),
    (["--save-vectors"], "give --out"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(checkpoints, args, message):
    result = invoke("eigs", checkpoints[0], *FAST, *args)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_missing_file_other_settings_and_foreign_out_file(tmp_path, checkpoints):
    missing = invoke("eigs", tmp_path / "nope.pt", *FAST)
    assert missing.exit_code == 2 and "no such checkpoint file" in missing.stderr
    out = tmp_path / "e.h5"
    assert invoke("eigs", checkpoints[0], *FAST, "--k", "2", "--out", out).exit_code == 0
    other = invoke("eigs", checkpoints[0], *FAST, "--k", "3", "--out", out)
    assert other.exit_code == 2 and "other settings (k)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    wrong = invoke("eigs", checkpoints[0], *FAST, "--out", foreign)
    assert wrong.exit_code == 2 and "not an eigs result file" in wrong.stderr
    no_density = invoke("figures", "density", out)
    assert no_density.exit_code == 2 and "--density" in no_density.stderr


def test_start_vectors_from_a_subsample(tmp_path, checkpoints):
    """Eigenvectors of a 150-sample run start the 600-sample run: its eigenvalues are those of a
    cold start on the same samples; a file over other parameters is refused in one line."""
    sub = tmp_path / "sub.h5"
    made = invoke("eigs", checkpoints[0], "--samples", "150", "--device", "cpu", "--tol", "1e-2",
                  "--save-vectors", "--out", sub)
    assert made.exit_code == 0, made.stderr
    args = ["eigs", checkpoints[0], "--samples", "600", "--batch-size", "200", "--device", "cpu", "--tol", "1e-6",
            "--json"]
    warm = invoke(*args, "--start-vectors", sub, "--out", tmp_path / "warm.h5")
    cold = invoke(*args)
    assert warm.exit_code == 0 and cold.exit_code == 0, warm.stderr + cold.stderr
    (w,), (c,) = json.loads(warm.stdout), json.loads(cold.stdout)
    assert w["converged"] and c["converged"]
    np.testing.assert_allclose(w["eigenvalues"], c["eigenvalues"], rtol=1e-4)
    with h5py.File(tmp_path / "warm.h5", "r") as f:
        assert json.loads(f[str(checkpoints[0]).replace("/", "|")].attrs["options"])["start_vectors"] == str(sub)

    subset = invoke(*args, "--params", "9.*", "--start-vectors", sub)
    assert subset.exit_code == 2 and len(subset.stderr.strip().splitlines()) == 1
    assert "--start-vectors" in subset.stderr and "same architecture and --params" in subset.stderr
