"""``sweep``: grids from TOML and from --set, bad keys and values in one line, a real tiny sweep on
digits whose summary matches each run's own history, a rerun that skips finished runs, a run that
diverges, and a sweep killed mid-run (a real SIGKILL) that resumes the interrupted run.

The killed sweep is a separate process that holds still at a known point (the second run's
second epoch) until it is killed, so the test waits for a state and never races the job."""

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from alignsam_diag.errors import UserError
from alignsam_diag.store.sweep import read_summary, seed_groups
from alignsam_diag.sweep import build_spec, parse_set, run_name, run_sweep
from conftest import assert_one_clear_line, error_line, invoke

TINY = ["--arch", "mlp", "--arch-kwargs", '{"hidden": 16}', "--subset", "120", "--batch-size", "40",
        "--epochs", "1", "--device", "cpu", "--quiet"]
TINY_BASE = {"arch": "mlp", "arch_kwargs.hidden": 16, "data.subset": 120, "batch_size": 40}

SPEC = """
[base]
arch = "mlp"
epochs = 3
data.subset = 120

[[grid]]
optimizer = ["align-sam"]
hyper.lam = [0.5, 2]
seed = [0, 1]

[[grid]]                 # align-sam at its default λ = 2 is a run of the first grid: run once
optimizer = ["sam", "align-sam"]
seed = 0
"""


def test_grid_from_toml(tmp_path):
    (tmp_path / "spec.toml").write_text(SPEC)
    plan = build_spec(tmp_path / "spec.toml").plan()
    assert [run.name for run in plan] == [
        "hyper.lam=0.5,optimizer=align-sam,seed=0", "hyper.lam=0.5,optimizer=align-sam,seed=1",
        "hyper.lam=2.0,optimizer=align-sam,seed=0", "hyper.lam=2.0,optimizer=align-sam,seed=1",
        "hyper.lam=none,optimizer=sam,seed=0"]
    assert [run.group for run in plan] == ["hyper.lam=0.5,optimizer=align-sam"] * 2 + [
        "hyper.lam=2.0,optimizer=align-sam"] * 2 + ["hyper.lam=none,optimizer=sam"]
    first, sam = plan[0], plan[-1]
    assert first.config.hyper == {"lam": 0.5} and isinstance(plan[2].config.hyper["lam"], float)
    assert (first.config.arch, first.config.epochs, first.config.data.subset, first.config.seed) == ("mlp", 3, 120, 0)
    assert first.resolved.hyper == {"rho": 0.05, "lam": 0.5} and first.resolved.aux_batch_size == 32
    assert sam.config.hyper == {} and sam.values == {"hyper.lam": None, "optimizer": "sam", "seed": 0}


def test_grid_from_set_and_how_the_sources_combine(tmp_path):
    plan = build_spec(None, ["lam=0.5,1", "seed=0,1"], {"optimizer": "align-sam", **TINY_BASE}).plan()
    assert [run.name for run in plan] == ["hyper.lam=0.5,seed=0", "hyper.lam=0.5,seed=1",
                                          "hyper.lam=1.0,seed=0", "hyper.lam=1.0,seed=1"]
    assert parse_set("hyper.lam=0.5, 1") == parse_set("lam=0.5,1") == ("hyper.lam", [0.5, 1.0])
    assert parse_set("aux_batch_size=8,none") == ("aux_batch_size", [8, None])
    assert parse_set("data.augment=true,false") == ("data.augment", [True, False])
    assert parse_set("arch_kwargs.width=4,8") == ("arch_kwargs.width", [4, 8])

    (tmp_path / "spec.toml").write_text(SPEC)
    # --set replaces the key in every grid; a flag replaces the file's base entry
    spec = build_spec(tmp_path / "spec.toml", ["seed=5"], {"epochs": 1})
    assert spec.base == {"arch": "mlp", "epochs": 1, "data.subset": 120}
    assert [grid["seed"] for grid in spec.grids] == [[5], [5]]
    assert [run.name for run in spec.plan()][-1] == "hyper.lam=none,optimizer=sam,seed=5"
    spec = build_spec(tmp_path / "spec.toml", ["epochs=1,2"])  # a --set takes the key out of the base
    assert "epochs" not in spec.base and len(spec.plan()) == 10


def test_run_names_are_safe_and_distinct():
    assert run_name({"optimizer": "align-sam", "lr": 0.1}) == "lr=0.1,optimizer=align-sam"
    odd = [run_name({"data.name": f"npz:/data/{name}.npz"}) for name in ("a b", "a/b", "a-b")]
    assert len(set(odd)) == 3 and all("/" not in n and " " not in n for n in odd)
    assert len(run_name({"arch_kwargs.x": "y" * 500})) <= 120


BAD = [
    (["--set", "lamda=1"], "--set lamda=1: 'lamda' is not an option of a training run; choose one of"),
    (["--set", "lr=abc"], "--set lr=abc: lr 'abc' is not a number."),
    (["--set", "epochs=1.5"], "epochs '1.5' is not a whole number"),
    (["--set", "lr"], "--set lr: write KEY=V1,V2,..."),
    (["--set", "lr="], "lr has no values"),
    (["--set", "lr=0.1", "--set", "lr=0.2"], "lr is set twice"),
    (["--set", "lr=-1"], "sweep run lr=-1.0: lr = -1.0: must be positive."),
    (["--set", "data.label_noise=2"], "data.label_noise = 2.0: must be a fraction between 0 and 1."),
    (["--set", "lam=-1", "--optimizer", "align-sam"], "hyper.lam = -1.0: must be at least 0.0."),
    (["--set", "lam=1,2"], "sweep run hyper.lam=1.0: sgd does not take --lam"),
    (["--set", "lam=1,2", "--lam", "2", "--optimizer", "align-sam"],
     "hyper.lam is both fixed (a flag of the command line) and varied"),
    (["--set", "optimizer=nadam"], "unknown optimizer 'nadam'"),
    ([], "nothing to sweep"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) or "none" for a, _ in BAD])
def test_bad_keys_and_values_are_one_line_and_make_nothing(tmp_path, args, message):
    assert_one_clear_line(invoke("sweep", *args, *TINY, "--out", tmp_path / "sweep"), message)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("text,message", [
    ("[base\n", "not valid TOML"),
    ("lr = 0.1\n", "unknown entry 'lr'; a sweep spec has a [base] table"),
    ("[[grid]]\nlamda = [1]\n", "spec.toml [[grid]] #1: 'lamda' is not an option"),
    ("[[grid]]\nlr = ['fast']\n", "spec.toml [[grid]] #1: lr 'fast' is not a number."),
    ("[[grid]]\nlr = []\n", "lr has no values"),
    ("[base]\nlr = 0.1\n[[grid]]\nlr = [0.2]\n", "lr is both fixed (" ),
])
def test_bad_spec_files_are_one_line(tmp_path, text, message):
    (tmp_path / "spec.toml").write_text(text)
    assert_one_clear_line(invoke("sweep", tmp_path / "spec.toml", *TINY, "--out", tmp_path / "sweep"), message)
    assert "no such sweep spec" in error_line(invoke("sweep", tmp_path / "none.toml", "--out", tmp_path / "s"))


def history_row(run_dir: Path) -> dict:
    """The last epoch of a run, read straight from its history.h5 (not through the library)."""
    with h5py.File(run_dir / "history.h5") as f:
        return {k: f[k][()] for k in ("epoch", "test_acc", "test_loss", "train_acc", "epoch_seconds")}


def test_a_tiny_sweep_end_to_end_then_a_rerun_skips_it(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--set", "lam=0.5,2", "--set", "seed=0,1", "--optimizer", "align-sam", *TINY, "--out", out]
    done = invoke(*args, "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    names = ["hyper.lam=0.5,seed=0", "hyper.lam=0.5,seed=1", "hyper.lam=2.0,seed=0", "hyper.lam=2.0,seed=1"]
    assert report["trained"] == names and report["skipped"] == []
    assert sorted(p.name for p in (out / "runs").iterdir()) == names

    summary = read_summary(out)
    assert summary.keys == ["hyper.lam", "seed"] and summary.planned == names and summary.missing() == []
    for record in summary.records:
        row = history_row(out / record.run_dir)
        assert record.epochs == len(row["epoch"]) == 1 and record.status == "finished"
        assert record.test_acc == row["test_acc"][-1] and record.test_loss == row["test_loss"][-1]
        assert record.total_seconds == pytest.approx(row["epoch_seconds"].sum())
        assert record.config["hyper"]["lam"] == record.values["hyper.lam"] and record.config["aux_batch_size"] == 10
    for group, lam in zip(seed_groups(summary.records), (0.5, 2.0)):
        accs = [history_row(out / "runs" / f"hyper.lam={lam},seed={s}")["test_acc"][-1] for s in (0, 1)]
        assert group.seeds == 2 and group.first.option("hyper.lam") == lam
        assert group.mean("test_acc") == pytest.approx(statistics.mean(accs))
        assert group.std("test_acc") == pytest.approx(statistics.stdev(accs))

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.pt")}
    again = invoke(*args, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["trained"] == [] and json.loads(again.stdout)["skipped"] == names
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run touched
    assert read_summary(out).records == summary.records

    line = error_line(invoke(*args[:-2], "--lr", "0.05", "--out", out))  # same folders, other fixed options
    assert "holds a run with other options: lr 0.05 (stored: 0.1)" in line and "another --out" in line


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    done = invoke("sweep", "--set", "lr=0.05,1e30", *TINY, "--out", tmp_path, "--json")
    assert done.exit_code == 0, done.stderr
    finished, diverged = read_summary(tmp_path).records
    assert (finished.name, finished.status) == ("lr=0.05", "finished") and finished.test_acc > 0
    assert (diverged.name, diverged.status, diverged.epochs) == ("lr=1e+30", "diverged", 0)
    assert math.isnan(diverged.test_acc)
    reported = json.loads(done.stdout)["runs"][1]
    assert reported["status"] == "diverged" and reported["test_acc"] is None
    again = invoke("sweep", "--set", "lr=0.05,1e30", *TINY, "--out", tmp_path)  # tried again, said in the table
    assert again.exit_code == 0 and "lr=0.05   skipped (finished before)" in again.stdout
    assert "lr=1e+30  diverged" in again.stdout


KILL_SETS = ["optimizer=sgd,sam,align-sam"]
KILL_BASE = {**TINY_BASE, "epochs": 2}


def run_job(out: str, hold: bool = False, updates: list | None = None):
    """The sweep that both the killed process and the test run: three runs of two epochs. With
    ``hold`` it stops for good in the second run's second epoch (after that run saved epoch 1)
    and waits to be killed."""
    torch.set_num_threads(1)
    runs: list[str] = []

    def progress(update):
        if update.task == "sweep" and "run" in update.info:
            runs.append(update.info["run"])
        if updates is not None:
            updates.append((runs[-1] if runs else None, update.task, update.completed))
        while hold and len(runs) == 2 and update.task == "train" and update.info["epoch"] == 2:
            time.sleep(0.05)

    return run_sweep(build_spec(None, KILL_SETS, KILL_BASE), out, progress=progress)


def test_a_sweep_killed_mid_run_resumes_that_run(tmp_path):
    out = tmp_path / "sweep"
    first, second, third = (f"optimizer={name}" for name in ("sgd", "sam", "align-sam"))
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_sweep as t; t.run_job({str(out)!r}, hold=True)")
    job = subprocess.Popen([sys.executable, "-c", code])
    held = out / "runs" / second / "history.h5"  # written at the end of epoch 1, just before the hold
    deadline = time.monotonic() + 600  # only against a hang: the wait is for a state
    while time.monotonic() < deadline and job.poll() is None and not held.exists():
        time.sleep(0.05)
    assert job.poll() is None, "the sweep ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    assert [r.name for r in read_summary(out).records] == [first]
    before = history_row(out / "runs" / second)
    assert before["epoch"].tolist() == [1.0]

    updates: list = []
    result = run_job(str(out), updates=updates)
    assert result.skipped == [first] and result.trained == [second, third]
    epochs = [(run, done) for run, task, done in updates if task == "epoch"]
    assert epochs == [(second, 2), (third, 1), (third, 2)]  # the killed run goes on from its epoch 1
    assert [(task, done) for run, task, done in updates if task == "sweep"] == [("sweep", 1), ("sweep", 2),
                                                                               ("sweep", 3)]
    after = history_row(out / "runs" / second)
    assert after["epoch"].tolist() == [1.0, 2.0] and after["test_acc"][0] == before["test_acc"][0]
    assert after["epoch_seconds"][0] == before["epoch_seconds"][0]  # epoch 1 kept, not trained again
    assert [r.epochs for r in read_summary(out).records] == [2, 2, 2]


def test_library_errors_name_the_key():
    with pytest.raises(UserError, match=r"--set a\.b=1: 'a\.b' is not an option"):
        build_spec(None, ["a.b=1"])
    with pytest.raises(UserError, match="base options: momentum 'high' is not a number"):
        build_spec(None, ["seed=0"], {"momentum": "high"})
