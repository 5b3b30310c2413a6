"""`landscape` under torchrun: the grid cells are split across 2 ranks and gathered by rank 0
into one file, whose surface and directions equal the same command's in one process (this test
process, the oracle), for a plane of random directions, an interpolation with BatchNorm
statistics re-estimated at every point, and a file resumed from a partly finished one."""

import json

import numpy as np
import torch

from alignsam_diag.analysis.directions import random_directions
from alignsam_diag.analysis.landscape import evaluate_surface
from alignsam_diag.landscape_types import LandscapeSpec, Surface
from alignsam_diag.models import build_model
from alignsam_diag.store.landscape import read_landscape, write_landscape
from conftest import SMALL_CNN, invoke
from distributed_harness import first_error, run_ranks, torchrun

FAST = ["--samples", "200", "--batch-size", "100", "--device", "cpu", "--save-every", "0"]
PLANE = ["--grid", "7", "--xrange", "-1:1", "--yrange", "-0.5:0.5", *FAST]


def ranks_run(*args):
    run = torchrun("landscape", *args, "--json")
    assert run.returncode == 0, first_error(run.stderr) or run.stderr[-3000:]
    return json.loads(run.stdout)


def alone_run(*args):
    result = invoke("landscape", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_surface(ranks_file, alone_file):
    ranks, alone = read_landscape(ranks_file).group(), read_landscape(alone_file).group()
    assert ranks.surface.done.all() and alone.surface.done.all()
    np.testing.assert_allclose(ranks.surface.loss, alone.surface.loss, rtol=1e-6)
    np.testing.assert_allclose(ranks.surface.acc, alone.surface.acc, rtol=1e-6)
    np.testing.assert_array_equal(ranks.directions, alone.directions)
    assert ranks.direction_names == alone.direction_names and ranks.points_per_pass == alone.points_per_pass


def grid_problem():
    """A cnn-small, two random directions, 200 random inputs in batches of 100, an empty 5×5 grid."""
    torch.manual_seed(0)
    model = build_model(SMALL_CNN)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 1, 8, 8, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    surface = Surface.empty(LandscapeSpec(grid=5).make_grid())
    return model, random_directions(model, 2), [(x[:100], y[:100]), (x[100:], y[100:])], surface


def _evaluate_rank(rank, folder):
    model, directions, batches, surface = grid_problem()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    computed = evaluate_surface(model, directions, surface, batches, points_per_pass=2, sharded=True)
    torch.save({"surface": surface, "calls": len(calls), "computed": computed}, folder / f"rank{rank}.pt")


def test_sharded_evaluation_splits_the_blocks_and_every_rank_gets_the_surface(tmp_path):
    run_ranks(_evaluate_rank, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    model, directions, batches, alone = grid_problem()
    assert evaluate_surface(model, directions, alone, batches, points_per_pass=2) == 25
    # 13 blocks of ≤ 2 cells dealt out in turn: 7 to rank 0, 6 to rank 1, each over 2 batches
    assert [r["calls"] for r in ranks] == [14, 12] and [r["computed"] for r in ranks] == [25, 25]
    for r in ranks:
        assert r["surface"].done.all()
        np.testing.assert_array_equal(r["surface"].loss, alone.loss)
        np.testing.assert_array_equal(r["surface"].acc, alone.acc)


def test_plane_of_random_directions_equals_one_process(tmp_path, checkpoints):
    report = ranks_run(checkpoints[0], *PLANE, "--points-per-pass", "auto", "--out", tmp_path / "ranks.h5")
    assert report["results"][0]["cells_computed"] == 49
    # rank 0 timed the points per pass and every rank used its choice: the file records it
    chosen = read_landscape(tmp_path / "ranks.h5").group().points_per_pass
    alone_run(checkpoints[0], *PLANE, "--points-per-pass", chosen, "--out", tmp_path / "alone.h5")
    assert_same_surface(tmp_path / "ranks.h5", tmp_path / "alone.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.h5", "ranks.h5"]  # no lock or stray file left


def test_interpolation_with_recomputed_batchnorm_equals_one_process(tmp_path, checkpoints):
    line = [checkpoints[0], "--dim", "1", "--grid", "7", "--xrange", "-0.5:1.5",
            "--directions", f"interpolate:{checkpoints[1]}", "--bn", "recompute", "--bn-batches", "2", *FAST]
    ranks_run(*line, "--out", tmp_path / "ranks.h5")
    alone_run(*line, "--out", tmp_path / "alone.h5")
    assert_same_surface(tmp_path / "ranks.h5", tmp_path / "alone.h5")


def test_resumes_a_partly_finished_file_to_the_one_process_surface(tmp_path, checkpoints):
    args = [checkpoints[0], *PLANE, "--points-per-pass", "3"]
    alone_run(*args, "--out", tmp_path / "alone.h5")
    # the file an interrupted run leaves: its first 20 cells done (marked by a value no run gives)
    partial = read_landscape(tmp_path / "alone.h5")
    surface = partial.group().surface
    done = surface.done.reshape(-1)
    done[20:] = False
    surface.loss.reshape(-1)[:20] = 7.0
    surface.loss.reshape(-1)[20:] = np.nan
    write_landscape(tmp_path / "partial.h5", partial)

    report = ranks_run(*args, "--out", tmp_path / "partial.h5")
    assert report["results"][0]["cells_computed"] == 49 - 20
    resumed, alone = (read_landscape(tmp_path / name).group().surface for name in ("partial.h5", "alone.h5"))
    assert resumed.done.all()
    np.testing.assert_array_equal(resumed.loss.reshape(-1)[:20], 7.0)  # finished cells are not recomputed
    np.testing.assert_allclose(resumed.loss.reshape(-1)[20:], alone.loss.reshape(-1)[20:], rtol=1e-6)
    np.testing.assert_allclose(resumed.acc, alone.acc, rtol=1e-6)


def test_a_file_locked_by_another_run_stops_every_rank(tmp_path, checkpoints):
    from alignsam_diag.files import output_lock

    with output_lock(tmp_path / "busy.h5"):
        run = torchrun("landscape", checkpoints[0], *PLANE, "--points-per-pass", "2", "--out", tmp_path / "busy.h5",
                       timeout_s=60)
    assert run.returncode != 0
    assert "another alignsam-diag run" in first_error(run.stderr)
    assert "lost contact" not in run.stderr
