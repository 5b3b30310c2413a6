"""`alignsam-diag landscape` and `figures landscape` as a user runs them: JSON fields, resuming
after a real kill of the CLI process, figures from the file, one-line errors.

Only the killed run is a separate process (CLI start-up costs seconds on a small machine); the
others go through the real Typer app in this process."""

import json
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignsam_diag.inputs import load_inputs
from alignsam_diag.store.landscape import read_landscape
from conftest import invoke

FAST = ["--samples", "300", "--batch-size", "150", "--points-per-pass", "3", "--device", "cpu"]


@pytest.fixture
def env(cli_env):
    return {**cli_env, "OMP_NUM_THREADS": "1"}  # the same numbers in every process, and fast on 2 cores


def test_json_two_checkpoints_and_figures(tmp_path, checkpoints):
    out = tmp_path / "plane.h5"
    result = invoke("landscape", *checkpoints, "--grid", "5", "--xrange", "-1:1", "--yrange", "-0.5:0.5",
                 *FAST, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["results"]] == ["sgd-last", "sam-last"]
    for r, path in zip(report["results"], checkpoints):
        assert r["checkpoint"] == str(path)
        assert r["x"] == pytest.approx(np.linspace(-1, 1, 5)) and r["y"] == pytest.approx(np.linspace(-0.5, 0.5, 5))
        loss, acc = np.array(r["loss"]), np.array(r["accuracy"])
        assert loss.shape == acc.shape == (5, 5) and r["cells_computed"] == 25
        assert loss[2, 2] == r["centre_loss"] and ((acc >= 0) & (acc <= 1)).all()
        # the centre is the model itself: its own loss and accuracy on the same 300 samples
        own = load_inputs(path, samples=300, seed=0, batch_size=150)
        with torch.no_grad():
            logits = own.checkpoint.model(own.data.x)
        assert r["centre_loss"] == pytest.approx(float(F.cross_entropy(logits, own.data.y)), rel=1e-5)
        assert r["centre_accuracy"] == pytest.approx(float((logits.argmax(1) == own.data.y).float().mean()))
    stored = read_landscape(out)
    np.testing.assert_array_equal(stored.groups[1].surface.loss, np.array(report["results"][1]["loss"]))
    with h5py.File(out) as f:
        assert {"xcoordinates", "ycoordinates", "train_loss", "train_acc"} <= set(f)

    figures = tmp_path / "figs"
    for kind, fmt in (("contourf", "png"), ("surface", "pdf")):
        made = invoke("figures", "landscape", out, "--kind", kind, "--log", "--format", fmt,
                   "--labels", "SGD,SAM", "--out", figures)
        assert made.exit_code == 0, made.stderr
        assert (figures / f"plane-{kind}-log.{fmt}").stat().st_size > 1000


def test_resume_after_killing_the_cli(tmp_path, cli, env, checkpoints):
    args = ["landscape", checkpoints[0], "--grid", "25", *FAST, "--save-every", "0"]
    out = tmp_path / "killed.h5"
    job = subprocess.Popen(cli + [str(a) for a in args] + ["--out", str(out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done_before = time.monotonic() + 600, 0  # the deadline only guards a hang: the wait is for a state
    while time.monotonic() < deadline and job.poll() is None and done_before < 12:
        if out.exists():
            done_before = int(read_landscape(out).groups[0].surface.done.sum())
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    done_before = int(read_landscape(out).groups[0].surface.done.sum())
    assert 12 <= done_before < 625  # 625 cells: enough that a busy machine's poll sees the job midway

    resumed = invoke(*args, "--out", out, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    (r,) = json.loads(resumed.stdout)["results"]
    assert r["cells_computed"] == 625 - done_before and r["cells_done"] == 625

    whole = invoke(*args, "--out", tmp_path / "whole.h5", "--json")
    assert whole.exit_code == 0, whole.stderr
    (w,) = json.loads(whole.stdout)["results"]
    assert w["cells_computed"] == 625
    assert r["loss"] == w["loss"] and r["accuracy"] == w["accuracy"]


BAD = [
    (["--dim", "3"], "--dim 3"),
    (["--xrange", "1"], "--xrange 1: write LOW:HIGH"),
    (["--xrange", "1:-1"], "low end must be below"),
    (["--norm", "weight"], "--norm weight"),
    (["--points-per-pass", "many"], "--points-per-pass many"),
    (["--directions", "sideways"], "--directions sideways"),
    (["--split", "val"], "--split val"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(tmp_path, checkpoints, args, message):
    out = tmp_path / "x.h5"
    result = invoke("landscape", checkpoints[0], "--grid", "3", *FAST, *args, "--out", out)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out.exists()


def test_missing_checkpoint_resume_mismatch_and_bad_figure_input(tmp_path, checkpoints):
    out = tmp_path / "one.h5"
    missing = invoke("landscape", checkpoints[0], tmp_path / "nope.pt", *FAST, "--out", out)
    assert missing.exit_code == 2 and "no such checkpoint file" in missing.stderr and not out.exists()
    first = invoke("landscape", checkpoints[0], "--dim", "1", "--grid", "3", *FAST, "--out", out)
    assert first.exit_code == 0, first.stderr
    other = invoke("landscape", checkpoints[0], "--dim", "1", "--grid", "5", *FAST, "--out", out)
    assert other.exit_code == 2 and "grid 3 (now 5)" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    wrong_kind = invoke("figures", "landscape", out, "--kind", "contour", "--out", tmp_path)
    assert wrong_kind.exit_code == 2 and "use --kind curve" in wrong_kind.stderr
    not_h5 = invoke("figures", "landscape", checkpoints[0], "--out", tmp_path)
    assert not_h5.exit_code == 2 and "error: " in not_h5.stderr
