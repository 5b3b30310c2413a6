"""Checkpoints hold the settings a run used, defaults written out: the variant's hyper-parameters,
|B^a|, the base optimizer, the LR schedule with its warm-up, the tool version. `inspect` shows
them; a later change of a default changes neither what a checkpoint reports nor how it resumes;
`--resume` compares given flags with the stored (resolved) values."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import alignsam_diag
from alignsam_diag import optim
from conftest import error_line, invoke

# no hyper-parameter flags: rho, lam and |B^a| are left to the variants' defaults
TINY = ["--subset", "64", "--arch-kwargs", '{"width": 4}', "--batch-size", "32", "--lr", "0.05",
        "--warmup-epochs", "0.5", "--device", "cpu"]
SGD_BASE = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4, "nesterov": False,
            "maximize": False}
SCHEDULE = {"name": "cosine", "peak_lr": 0.05, "final_lr": 0.0, "total_steps": 4, "warmup": "linear",
            "warmup_epochs": 0.5, "warmup_steps": 1, "steps_per_epoch": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """2-epoch SAM and Align-SAM runs with epoch_001.pt kept (tests change only copies)."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("sam", "align-sam"):
        done = invoke("train", *TINY, "--optimizer", name, "--epochs", "2", "--save-every", "1", "--out", root / name)
        assert done.exit_code == 0, done.stderr
    return {name: root / name for name in ("sam", "align-sam")}


def stored(run: Path, name: str = "last.pt") -> dict:
    return torch.load(run / name, weights_only=True)


@pytest.mark.parametrize("name,hyper,aux", [("sam", {"rho": 0.05}, None),
                                            ("align-sam", {"rho": 0.05, "lam": 2.0}, 8)])
def test_runs_without_hyper_flags_store_the_resolved_settings(runs, name, hyper, aux):
    ckpt = stored(runs[name])
    assert ckpt["optimizer"] == {"name": name, "hyper": hyper, "aux_batch_size": aux, "base": SGD_BASE,
                                 "schedule": SCHEDULE}
    assert ckpt["config"]["hyper"] == hyper and ckpt["config"]["aux_batch_size"] == aux
    assert ckpt["version"] == alignsam_diag.__version__
    # the run followed the stored schedule: after epoch 1 (step 2), cosine from step 1 (warm-up) to step 4
    assert ckpt["history"]["lr"][0] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (2 - 1) / (4 - 1))))


def test_inspect_shows_the_settings_as_table_and_json(runs):
    path = runs["align-sam"] / "last.pt"
    report = json.loads(invoke("inspect", path, "--json").stdout)
    assert report["meta"]["optimizer"] == stored(runs["align-sam"])["optimizer"]
    assert report["meta"]["version"] == alignsam_diag.__version__
    table = invoke("inspect", path)
    assert table.exit_code == 0, table.stderr
    rows = {tuple(cell.strip() for cell in line.strip("│ ").split("│")) for line in table.stdout.splitlines()}
    for key, value in (("optimizer.name", "align-sam"), ("optimizer.hyper.rho", "0.05"), ("optimizer.hyper.lam", "2.0"),
                       ("optimizer.aux_batch_size", "8"), ("optimizer.base.momentum", "0.9"),
                       ("optimizer.base.nesterov", "False"), ("optimizer.schedule.name", "cosine"),
                       ("optimizer.schedule.warmup_steps", "1"), ("optimizer.schedule.total_steps", "4")):
        assert (key, value) in rows, table.stdout


def test_a_changed_default_changes_neither_the_report_nor_the_resumed_run(runs, tmp_path, monkeypatch):
    run = shutil.copytree(runs["sam"], tmp_path / "run")
    shutil.copyfile(run / "epoch_001.pt", run / "last.pt")
    sam = optim.OPTIMIZERS.get("sam")  # a later release changes SAM's default ρ in its description
    monkeypatch.setattr(sam, "hyper", tuple(replace(h, default=0.2) for h in sam.hyper))
    assert optim.hyperparameters("sam") == {"rho": 0.2}  # the registry follows the new default...
    report = json.loads(invoke("inspect", run / "last.pt", "--json").stdout)
    assert report["meta"]["optimizer"]["hyper"] == {"rho": 0.05}  # ...the checkpoint says what was used
    done = invoke("train", "--resume", "--out", run, "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    resumed, straight = stored(run)["state_dict"], stored(runs["sam"])["state_dict"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # resumed with ρ = 0.05, not 0.2


def test_resume_compares_flags_with_the_stored_resolved_values(runs, tmp_path):
    sam = shutil.copytree(runs["sam"], tmp_path / "sam")
    same = invoke("train", "--resume", "--out", sam, "--rho", "0.05", "--device", "cpu", "--json")
    assert same.exit_code == 0, same.stderr  # the default that was used, given again: no conflict
    line = error_line(invoke("train", "--resume", "--out", sam, "--rho", "0.1", "--aux-batch-size", "8",
                             "--device", "cpu"))
    assert "--rho 0.1 (stored: 0.05), --aux-batch-size 8 (stored: not set)." in line

    align = shutil.copytree(runs["align-sam"], tmp_path / "align")
    same = invoke("train", "--resume", "--out", align, "--lam", "2", "--aux-batch-size", "8", "--device", "cpu")
    assert same.exit_code == 0, same.stderr
    line = error_line(invoke("train", "--resume", "--out", align, "--lam", "3", "--aux-batch-size", "16",
                             "--device", "cpu"))
    assert "--lam 3.0 (stored: 2.0), --aux-batch-size 16 (stored: 8)." in line
