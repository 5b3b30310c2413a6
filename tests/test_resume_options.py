"""``train --resume`` uses the stored run: without --epochs the stored count stands, an option given
with a value other than the stored one is an error listing each (flag, given, stored), only --epochs
may extend, runtime options may differ; a tampered or damaged last.pt is said to be one."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import typer

from alignsam_diag.train import ResumeConflict, resume
from cli.app import app
from cli.train import NOT_STORED, STORED_AS
from conftest import error_line, invoke

TINY = ["--subset", "64", "--arch-kwargs", '{"width": 4}', "--batch-size", "32", "--lr", "0.05"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-epoch run with epoch_001.pt kept (never modified: tests work on copies)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    done = invoke("train", *TINY, "--epochs", "2", "--save-every", "1", "--device", "cpu", "--out", run)
    assert done.exit_code == 0, done.stderr
    return run


@pytest.fixture
def interrupted(finished, tmp_path) -> Path:
    """The same run as it was after epoch 1 of 2 (its real epoch-1 checkpoint as last.pt)."""
    run = shutil.copytree(finished, tmp_path / "run")
    shutil.copyfile(run / "epoch_001.pt", run / "last.pt")
    return run


def state(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def test_resume_without_epochs_keeps_the_stored_count_and_finishes_the_same_run(finished, interrupted):
    done = invoke("train", "--resume", "--out", interrupted, "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["epoch"] == 2  # not the --epochs default of 10
    resumed, straight = state(interrupted), state(finished)
    assert resumed["epoch"] == 2 and resumed["config"]["epochs"] == 2
    assert all(torch.equal(resumed["state_dict"][k], straight["state_dict"][k]) for k in straight["state_dict"])


def test_options_that_differ_from_the_stored_run_are_listed_and_nothing_runs(interrupted):
    before = (interrupted / "last.pt").read_bytes()
    line = error_line(invoke("train", "--resume", "--out", interrupted, "--lr", "0.5", "--optimizer", "sam",
                             "--rho", "0.1", "--subset", "32", "--arch-kwargs", '{"width": 8}', "--device", "cpu"))
    assert line == (f"error: {interrupted} was started with other options: --lr 0.5 (stored: 0.05), "  # as given
                    "--optimizer sam (stored: sgd), --rho 0.1 (stored: not set), --subset 32 (stored: 64), "
                    '--arch-kwargs {"width": 8} (stored: {"width": 4}). Leave them out to resume the run as '
                    "stored (only --epochs may extend it), or start a new run with another --out.")
    assert (interrupted / "last.pt").read_bytes() == before
    assert sorted(p.name for p in interrupted.iterdir()) == ["epoch_001.pt", "epoch_002.pt", "history.h5", "last.pt"]


def test_stored_values_given_again_and_runtime_options_are_accepted(interrupted):
    done = invoke("train", "--resume", "--out", interrupted, *TINY, "--dataset", "digits", "--seed", "0",
                  "--device", "cpu", "--download", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["epoch"] == 2


def test_epochs_may_only_extend_the_run(interrupted):
    line = error_line(invoke("train", "--resume", "--out", interrupted, "--epochs", "1", "--device", "cpu"))
    assert "--epochs 1" in line and "set to 2 epochs" in line and "can only extend" in line
    done = invoke("train", "--resume", "--out", interrupted, "--epochs", "3", "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["epoch"] == 3 and state(interrupted)["config"]["epochs"] == 3


def test_resume_without_a_run_says_so_and_creates_nothing(tmp_path):
    line = error_line(invoke("train", "--resume", "--out", tmp_path / "none", "--device", "cpu"))
    assert f"no {tmp_path / 'none' / 'last.pt'}" in line and "without --resume" in line
    assert not (tmp_path / "none").exists()


class Payload:
    """Unpickling this would touch a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["code-running pickle", "truncated", "another file's weights"])
def test_a_tampered_or_damaged_last_pt_is_named_as_such(interrupted, tmp_path, damage):
    last, marker = interrupted / "last.pt", tmp_path / "marker"
    if damage == "code-running pickle":
        torch.save({**state(interrupted), "extra": Payload(marker)}, last)
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}}, last)
    line = error_line(invoke("train", "--resume", "--out", interrupted, "--device", "cpu"))
    assert line == (f"error: {last}: not a checkpoint written by alignsam-diag train, or damaged; put back a good "
                    "copy (an epoch_NNN.pt of the run will do) or start a new run with another --out.")
    assert "--trust-checkpoint" not in line and not marker.exists()


def test_library_resume_reports_conflicts_by_field_name(interrupted):
    with pytest.raises(ResumeConflict) as caught:
        resume(interrupted, expect={"lr": 0.5, "data.subset": 64, "hyper.rho": 0.1})
    assert caught.value.conflicts == [("lr", 0.5, 0.05), ("hyper.rho", 0.1, None)]
    assert str(caught.value).startswith(f"{interrupted} was started with other options: lr 0.5 (stored: 0.05), "
                                        "hyper.rho 0.1 (stored: not set).")


def test_every_train_option_is_either_stored_or_runtime():
    command = typer.main.get_command(app).commands["train"]
    names = {p.name for p in command.params}
    assert set(STORED_AS).isdisjoint(NOT_STORED)
    assert names == set(STORED_AS) | set(NOT_STORED)
