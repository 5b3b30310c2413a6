"""`alignsam-diag cosine` as a user runs it: every checkpoint of a run in epoch order, JSON keys and
values (mean and std over pairs, change of each pair, lr 0 leaves θ where it is), --out written and
read back, the same seed the same numbers, --optimizer measuring another variant's step,
third-party checkpoints, `train --track-*` flags stored in the run, bad input in one line, and a
`--help` that imports nothing heavy."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignsam_diag.models import build_model
from alignsam_diag.models.checkpoint import read_file
from alignsam_diag.store.alignment import read_records
from conftest import SMALL_CNN, assert_one_clear_line, invoke
from test_startup import HEAVY, PROBE

TINY = ["--dataset", "digits", "--subset", "128", "--arch-kwargs", '{"width": 4}', "--batch-size", "32",
        "--lr", "0.05", "--device", "cpu", "--quiet"]
FAST = ["--pairs", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch SAM run keeping epoch_001.pt and epoch_002.pt, tracked every 3 steps."""
    folder = tmp_path_factory.mktemp("cosine") / "sam"
    done = invoke("train", *TINY, "--optimizer", "sam", "--epochs", "2", "--save-every", "1", "--out", folder,
                  "--track-cosine-every", "3", "--track-sharpness-every", "4", "--track-samples", "40")
    assert done.exit_code == 0, done.stderr
    return folder


def cosine_json(*args):
    done = invoke("cosine", *args, "--json")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_every_checkpoint_in_epoch_order_with_means_over_pairs(run, tmp_path):
    out = tmp_path / "cosine.h5"
    report = cosine_json(run, *FAST, "--out", out)
    assert [r["checkpoint"] for r in report] == [str(run / "epoch_001.pt"), str(run / "epoch_002.pt")]
    assert [r["epoch"] for r in report] == [1, 2] and [r["step"] for r in report] == [4, 8]
    stored = read_records(out)
    for r in report:
        assert {"checkpoint", "epoch", "cosine_b", "cosine_a", "change", "cosine_b_std"} <= set(r)
        assert r["optimizer"] == r["run_optimizer"] == "sam" and r["hyper"] == {"rho": 0.05}
        assert r["batch_size"] == 32 and r["aux_batch_size"] == 8 and r["pairs"] == 2 and r["passes"] == 5
        values = stored[r["checkpoint"]]
        b, a = values.column("cosine_b"), values.column("cosine_a")
        assert np.all(np.abs(np.concatenate([a, b])) <= 1)
        assert r["cosine_b"] == pytest.approx(b.mean()) and r["cosine_b_std"] == pytest.approx(np.std(b, ddof=1))
        assert r["change"] == pytest.approx(np.mean((a - b) / a))
    checkpoint = read_file(run / "epoch_001.pt")  # the lr of the next step, as the run had it
    assert report[0]["lr"] == pytest.approx(checkpoint["optimizer_state"]["param_groups"][0]["lr"])
    assert report[1]["lr"] == 0.0  # the end of the cosine schedule: θ does not move ...
    assert report[1]["cosine_a"] == report[1]["cosine_b"] and report[1]["change"] == 0.0
    again = cosine_json(run, *FAST, "--out", out)  # read back, nothing recomputed
    assert again == report
    fresh = cosine_json(run / "epoch_001.pt", *FAST)  # the same seed: the same numbers
    assert fresh[0]["cosine_b"] == report[0]["cosine_b"] and fresh[0]["cosine_a"] == report[0]["cosine_a"]
    other = cosine_json(run / "epoch_001.pt", *FAST, "--seed", "1")
    assert other[0]["cosine_b"] != report[0]["cosine_b"]
    table = invoke("cosine", run / "epoch_001.pt", *FAST)
    header, row = table.stdout.strip().splitlines()
    assert header.split() == ["checkpoint", "epoch", "step", "of", "lr", "cosine_b", "cosine_a", "change"]
    assert f"{report[0]['cosine_b']:+.4f} ± {report[0]['cosine_b_std']:.4f}" in row


def test_another_variants_step_and_overrides(run):
    align, sgd = (cosine_json(run / "epoch_001.pt", *FAST, "--optimizer", name, *extra)[0]
                  for name, extra in (("align-sam", ["--lam", "3"]), ("sgd", ["--lr", "0.01"])))
    assert align["optimizer"] == "align-sam" and align["run_optimizer"] == "sam"
    assert align["hyper"] == {"rho": 0.05, "lam": 3.0} and align["passes"] == 3  # the run's ρ, the given λ
    assert sgd["hyper"] == {} and sgd["rho"] == 0.05 and sgd["lr"] == 0.01 and sgd["passes"] == 5
    sizes = cosine_json(run / "epoch_001.pt", *FAST, "--batch-size", "16")[0]
    assert sizes["batch_size"] == 16 and sizes["aux_batch_size"] == 8  # |B^a| stays the run's


def test_third_party_checkpoints(checkpoints, tmp_path):
    ours_without_optimizer = cosine_json(checkpoints[0], *FAST)[0]
    assert ours_without_optimizer["optimizer"] == "sam" and ours_without_optimizer["lr"] == 0.1
    assert ours_without_optimizer["epoch"] is None and ours_without_optimizer["batch_size"] == 128
    plain = tmp_path / "weights.pt"
    torch.save(build_model(SMALL_CNN).state_dict(), plain)
    report = cosine_json(plain, *FAST, "--arch", "cnn-small", "--arch-kwargs", '{"width": 8}', "--dataset", "digits",
                         "--batch-size", "64")[0]
    assert report["run_optimizer"] is None and report["aux_batch_size"] == 16 and -1 <= report["cosine_b"] <= 1


def test_train_stores_the_tracking_settings(run):
    config = read_file(run / "last.pt")["config"]
    assert (config["track_cosine_every"], config["track_sharpness_every"], config["track_samples"]) == (3, 4, 40)
    resumed = invoke("train", "--resume", "--out", run, "--track-cosine-every", "5", "--device", "cpu")
    assert_one_clear_line(resumed, "--track-cosine-every 5 (stored: 3)")


@pytest.mark.parametrize("args, fragment", [
    (["{run}", "--pairs", "0"], "--pairs 0: must be at least 1"),
    (["{run}", "--optimizer", "nope"], "nope"),
    (["{run}", "--lam", "2"], "sam does not take --lam"),
    (["{run}", "--rho", "-1"], "--rho -1"),
    (["{run}", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["{run}", "--lr", "nan"], "--lr nan"),
    (["{empty}"], "a folder without checkpoints"),
    (["{run}/nothing.pt"], "no such checkpoint file"),
    (["{run}", "--out", "{run}/history.h5"], "not a cosine result file"),
    (["{run}", "--out", "{run}"], "is a folder"),
])
def test_bad_input_is_one_clear_line(run, tmp_path, args, fragment):
    (tmp_path / "empty").mkdir()
    filled = [a.format(run=run, empty=tmp_path / "empty") for a in args]
    assert_one_clear_line(invoke("cosine", *FAST, *filled), fragment)


def test_a_rerun_with_other_settings_is_refused(run, tmp_path):
    out = tmp_path / "c.h5"
    assert invoke("cosine", run / "epoch_001.pt", *FAST, "--out", out).exit_code == 0
    before = out.read_bytes()
    assert_one_clear_line(invoke("cosine", run / "epoch_001.pt", *FAST, "--out", out, "--seed", "2"),
                          "measured with other settings (seed)")
    assert out.read_bytes() == before


@pytest.mark.parametrize("args", [["cosine", "--help"], ["figures", "cosine", "--help"],
                                  ["figures", "sharpness", "--help"]])
def test_help_imports_nothing_heavy(args, cli_env):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
