"""Resumable landscape files: a real SIGKILL and a rerun that computes only the missing cells,
checkpoints sharing directions, refusing incompatible resumes, Li et al.'s surface layout."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from alignsam_diag.analysis.directions import random_directions
from alignsam_diag.analysis.landscape import LandscapeInputs, compute_landscapes
from alignsam_diag.errors import UserError
from alignsam_diag.landscape_types import LandscapeSpec
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.store.landscape import read_landscape

SPEC = LandscapeSpec(dim=2, grid=9, xrange=(-1.0, 1.0), yrange=(-0.5, 0.5), seed=4, batch_size=100)


def load(checkpoint: str) -> LandscapeInputs:
    """Checkpoints here are names of seeded models ("m0", "m1"...), built the same in every process."""
    torch.manual_seed(int(checkpoint.lstrip("m")))
    model = build_model(ModelSpec("cnn-small", 10, 1, 8, {"width": 4}))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 1, 8, 8, generator=gen), torch.randint(0, 10, (300,), generator=gen)
    return LandscapeInputs(model, [(x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)])


def _saved_cells(path: str) -> int:
    return int(read_landscape(path).groups[0].surface.done.sum()) if Path(path).exists() else 0


def run_job(path: str, checkpoints=("m0",), hold_at: int = 0):
    """The job both the killed subprocess and the test run. With ``hold_at`` it goes slowly (so
    that the saver, which writes at most every few write-durations, saves between blocks) and
    stops for good once the file holds ``hold_at`` cells: it waits to be killed, so the test
    waits for a state, never races the end of the job."""
    torch.set_num_threads(1)
    counter = []

    def progress(update):
        counter.append(update.completed)
        while hold_at and _saved_cells(path) >= hold_at:
            time.sleep(0.05)
        if hold_at:
            time.sleep(0.25)

    results = compute_landscapes(path, SPEC, list(checkpoints), load, points_per_pass=3,
                                 progress=progress, save_every_s=0.0)
    return results, counter


def test_resume_after_sigkill_computes_only_missing_cells(tmp_path):
    path = tmp_path / "killed.h5"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_landscape_resume as t; t.run_job({str(path)!r}, hold_at=6)")
    job = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 600  # only against a hang: the wait is for a state
    done_before = 0
    while time.monotonic() < deadline and job.poll() is None and done_before < 6:
        done_before = _saved_cells(str(path))
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    stored = read_landscape(path).groups[0].surface
    done_before = int(stored.done.sum())
    assert 6 <= done_before < stored.grid.size
    with h5py.File(path) as f:  # unfinished cells are marked in the file (-1, as Li et al.)
        loss, done = f["surfaces/m0/train_loss"][()], f["surfaces/m0/done"][()]
        assert (loss[~done] == -1).all() and (loss[done] > 0).all()

    (result,), _ = run_job(str(path))
    assert result.cells_computed == stored.grid.size - done_before
    np.testing.assert_array_equal(result.surface.loss[stored.done], stored.loss[stored.done])

    (uninterrupted,), _ = run_job(str(tmp_path / "whole.h5"))
    assert uninterrupted.cells_computed == stored.grid.size
    resumed = read_landscape(path).groups[0].surface
    assert resumed.done.all()
    np.testing.assert_array_equal(resumed.loss, uninterrupted.surface.loss)
    np.testing.assert_array_equal(resumed.acc, uninterrupted.surface.acc)

    again, counter = run_job(str(path))  # finished: nothing to do
    assert again[0].cells_computed == 0 and counter == []


def test_two_checkpoints_share_directions_and_li_layout(tmp_path):
    path = tmp_path / "two.h5"
    results, _ = run_job(str(path), checkpoints=("m0", "m1"))
    stored = read_landscape(path)
    assert [g.name for g in stored.groups] == ["m0", "m1"] and stored.spec["seed"] == 4
    for g in stored.groups:  # the stored directions are the seeded ones for that checkpoint
        expected = random_directions(load(g.checkpoint).model, seed=4)
        np.testing.assert_array_equal(g.directions, torch.stack([d.flat() for d in expected]).numpy())
        assert g.direction_names == expected[0].names
    assert not np.array_equal(*(g.directions for g in stored.groups))  # each scaled to its own weights
    assert not np.allclose(results[0].surface.loss, results[1].surface.loss)

    with h5py.File(path) as f:  # Li et al.'s surface file names, read as their plot_2D.py does
        x, y = f["xcoordinates"][:], f["ycoordinates"][:]
        X, Y = np.meshgrid(x, y)
        Z = np.array(f["train_loss"][:])
        assert Z.shape == X.shape == (9, 9)
        np.testing.assert_array_equal(Z, results[0].surface.loss)
        np.testing.assert_array_equal(f["surfaces/m1/train_acc"][:], 100 * results[1].surface.acc)  # percent
        np.testing.assert_array_equal(f["surfaces/m1/train_accuracy"][:], results[1].surface.acc)
        assert f["train_loss"].id == f["surfaces/m0/train_loss"].id  # a hard link, not a copy
    # orientation: rows follow y (the y range is half the x range here)
    grid = results[0].surface.grid
    assert np.allclose(Y[:, 0], grid.y) and np.allclose(X[0], grid.x)

    # the stored directions re-evaluate m1's surface on a coarser grid: every other cell
    coarse = LandscapeSpec(**{**SPEC.__dict__, "grid": 5, "directions": f"surface:{path}"})
    (again,) = compute_landscapes(tmp_path / "coarse.h5", coarse, ["m1"], load, points_per_pass=3)
    np.testing.assert_array_equal(read_landscape(tmp_path / "coarse.h5").groups[0].directions, stored.groups[1].directions)
    np.testing.assert_allclose(again.surface.loss, results[1].surface.loss[::2, ::2], rtol=1e-6)


def test_incompatible_resume_is_refused(tmp_path):
    path = tmp_path / "one.h5"
    run_job(str(path))
    other = LandscapeSpec(**{**SPEC.__dict__, "grid": 11})
    with pytest.raises(UserError, match="grid 9 .now 11."):
        compute_landscapes(path, other, ["m0"], load)
    with pytest.raises(UserError, match="same checkpoints"):
        compute_landscapes(path, SPEC, ["m1"], load)
    stored = read_landscape(path)
    stored.groups[0].surface.done[0, 0] = False  # an unfinished cell, and a changed checkpoint
    from alignsam_diag.store.landscape import write_landscape
    write_landscape(path, stored)
    with pytest.raises(UserError, match="has changed"):
        compute_landscapes(path, SPEC, ["m0"], lambda _: load("m1"))
    with pytest.raises(UserError, match="not a landscape result file"):
        h5py.File(tmp_path / "x.h5", "w").close()
        read_landscape(tmp_path / "x.h5")


def test_the_options_that_key_a_resume_are_passed_by_name():
    with pytest.raises(TypeError):
        LandscapeSpec(2, 9)  # positional: a reordered field would silently key another resume
    assert LandscapeSpec(dim=2, grid=9).to_dict()["grid"] == 9
