"""Defaults that converge: `train` with only --dataset and --optimizer starts below chance for
SGD, SAM and Align-SAM (the default one-epoch warm-up; without it, lr 0.1 starts far above)."""

import json
import math

import pytest

import typer

from cli.app import app
from conftest import invoke
from alignsam_diag.train import TrainConfig


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "align-sam"])
def test_first_epoch_is_below_chance_with_the_defaults(tmp_path, optimizer):
    # --epochs 2 only shortens the run: epoch 1 is the warm-up, the same for any epoch count
    result = invoke("train", "--dataset", "digits", "--optimizer", optimizer, "--epochs", "2",
                    "--device", "cpu", "--out", tmp_path / "run", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    history = json.loads(invoke("inspect", tmp_path / "run" / "last.pt", "--json").stdout)["history"]
    assert history["train_loss"][0] < math.log(10), history
    assert history["test_acc"][-1] > 0.5, history


def test_cli_and_library_share_the_warm_up_default():
    train = typer.main.get_command(app).commands["train"]
    flag = next(p for p in train.params if p.name == "warmup_epochs")
    assert flag.default == TrainConfig().warmup_epochs == 1.0
