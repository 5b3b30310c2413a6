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
    """Lanczos products committed in a (possibly still running) eigs output file."""
    with h5py.File(out, "r") as f:
        return int(f[key]["lanczos_state"].attrs["steps"])


def _start_and_wait_for_products(cli, cli_env, args, out, checkpoint, products):
    """Start eigs as a real process (stderr to ``out``.log) and return once it has saved
    ``products`` Lanczos products."""
    with open(out.with_suffix(".log"), "w") as log:
        job = subprocess.Popen([*cli, *map(str, args), "--out", str(out)],
                               env={**cli_env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=log)
    key = str(checkpoint).replace("/", "|")
    deadline, saved = time.monotonic() + 600, 0  # the deadline only guards a hang: the wait is for a state
    while time.monotonic() < deadline and job.poll() is None and saved < products:
        try:
            saved = _saved_products(out, key)
        except (OSError, KeyError, RuntimeError, ValueError):  # not there yet, or caught mid-write
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


def test_sigkill_mid_run_keeps_the_other_group_and_resumes_bit_identically(tmp_path, cli, cli_env, checkpoints):
    """A real eigs process (kept-graph mode, chosen by memory) is killed once ≥ 3 products are
    committed, wherever it is in its product or its append: the file is valid, the finished group of
    another checkpoint in it is untouched, and the rerun ends with exactly (bit for bit) the
    eigenvalues and residuals of an uninterrupted run, after as many products."""
    tiny = ["--samples", "64", "--batch-size", "32", "--device", "cpu"]  # the smallest data that still takes a while
    args = ["eigs", checkpoints[0], *tiny, "--tol", "1e-8", "--max-iter", "100", "--json"]
    out = tmp_path / "killed.h5"
    assert invoke("eigs", checkpoints[1], *tiny, "--out", out).exit_code == 0
    other = str(checkpoints[1]).replace("/", "|")
    with h5py.File(out, "r") as f:
        finished = {name: f[other][name][()] for name in ("eigenvalues", "residuals", "param_names")}
    job, key = _start_and_wait_for_products(cli, cli_env, args, out, checkpoints[0], 3)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    saved = _saved_products(out, key)
    assert saved >= 3
    with h5py.File(out, "r") as f:
        assert all(np.array_equal(f[other][name][()], value) for name, value in finished.items())

    resumed = invoke(*args, "--out", out)
    assert resumed.exit_code == 0, resumed.stderr
    whole = invoke(*args, "--out", tmp_path / "whole.h5")
    assert whole.exit_code == 0, whole.stderr
    (r,), (w,) = json.loads(resumed.stdout), json.loads(whole.stdout)
    assert r["graphs"]["mode"] == w["graphs"]["mode"] == "kept-graph"
    assert saved < w["hvps"] and r["hvps"] == w["hvps"]
    np.testing.assert_array_equal(r["eigenvalues"], w["eigenvalues"])
    np.testing.assert_array_equal(r["residuals"], w["residuals"])
    with h5py.File(out, "r") as f:
        assert "lanczos_state" not in f[key] and list(f) == sorted([key, other])


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
    (["--memory-budget", "lots"], "--memory-budget lots"),
    (["--memory-budget", "0%"], "--memory-budget 0%"),
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


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """300 digits images as an ``npz:`` data set (float32 N×1×8×8, labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("npz") / "digits300.npz"
    np.savez(path, x=(digits.images[:300] / 16.0).astype(np.float32)[:, None], y=digits.target[:300])
    return path


def test_full_keeps_graphs_when_they_fit_and_a_tiny_budget_rebuilds_them(tmp_path, checkpoints, digits_npz):
    """--full on a small data set picks the kept-graph mode from the measured estimate; a budget
    below the estimate picks the data-set mode; both give the same eigenvalues after as many
    products. The choice is reported (JSON, HDF5 attribute, one stderr line) and is not an option
    of the results: a rerun forcing the other mode reads the same results back."""
    args = ["eigs", checkpoints[0], "--dataset", f"npz:{digits_npz}", "--full", "--batch-size", "128",
            "--device", "cpu", "--tol", "1e-6", "--json"]
    kept = invoke(*args, "--out", tmp_path / "kept.h5")
    rebuilt = invoke(*args, "--memory-budget", "1KiB", "--out", tmp_path / "rebuilt.h5")
    assert kept.exit_code == 0 and rebuilt.exit_code == 0, kept.stderr + rebuilt.stderr
    (k,), (r,) = json.loads(kept.stdout), json.loads(rebuilt.stdout)
    assert k["samples"] == r["samples"] == 300
    assert k["graphs"]["mode"] == "kept-graph" and r["graphs"]["mode"] == "data-set"
    assert not k["graphs"]["forced"] and not r["graphs"]["forced"] and r["graphs"]["budget_bytes"] == 1024
    assert k["graphs"]["estimate_bytes"] == r["graphs"]["estimate_bytes"] > 1024
    assert k["graphs"]["estimate_bytes"] <= k["graphs"]["budget_bytes"]
    assert k["hvps"] == r["hvps"]
    np.testing.assert_allclose(k["eigenvalues"], r["eigenvalues"], rtol=1e-9)
    for result, line in ((kept, "eigs: kept-graph mode (graphs estimated at "),
                         (rebuilt, "eigs: data-set mode, graphs rebuilt for every product (kept graphs estimated at ")):
        said = [text for text in result.stderr.splitlines() if text.startswith("eigs:")]
        assert len(said) == 1 and said[0].startswith(line) and said[0].endswith(" budget)"), result.stderr
    key = str(checkpoints[0]).replace("/", "|")
    with h5py.File(tmp_path / "rebuilt.h5", "r") as f:
        assert json.loads(f[key].attrs["graphs"]) == r["graphs"]

    again = invoke(*args, "--keep-graph", "--out", tmp_path / "rebuilt.h5")
    assert again.exit_code == 0, again.stderr
    (a,) = json.loads(again.stdout)
    assert a["eigenvalues"] == r["eigenvalues"] and a["graphs"] == r["graphs"]
    assert not [text for text in again.stderr.splitlines() if text.startswith("eigs:")]  # nothing was computed
