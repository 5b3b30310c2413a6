"""`robustness` under a real `torchrun` of 2 ranks against the same command in one process: the
same counts and accuracies in the HDF5 file and the JSON, the same corruption cache files (the
ranks corrupt their blocks of the images, rank 0 writes them), cells that split unevenly over
the ranks, a file with some cells done completed under torchrun to the one-process values, and a
step that fails on one rank only ending every rank (real gloo ranks)."""

import json

import torch

from alignsam_diag.distributed import on_every_rank, on_main_rank
from alignsam_diag.errors import UserError
from alignsam_diag.store.robustness import read_records
from conftest import invoke
from distributed_harness import run_ranks, torchrun

# 360 digits test images in 9 batches of 40: rank 0 scores 4 batches (160 images), rank 1 5 (200).
CELLS = ["--corruptions", "gaussian_noise,contrast", "--batch-size", "40", "--workers", "0", "--device", "cpu",
         "--quiet", "--json"]


def stored(path):
    """Per (checkpoint, suite): settings, parameters' hash and every cell's counts, from the file."""
    return {(r.checkpoint, r.suite): (r.settings, r.params_sha256, r.optimizer,
                                      sorted((c.corruption, c.severity, c.correct1, c.correct5, c.samples, c.top1,
                                              c.top5) for c in r.cells))
            for r in read_records(path)}


def without_times(report):
    """The JSON report without what depends on the run (wall time, cells this call computed)."""
    for summary in report:
        summary.pop("cells_computed")
        for cell in summary["cells"]:
            cell.pop("seconds")
    return report


def cache_files(cache):
    """Each cache file's path below ``cache`` and its bytes."""
    return {p.relative_to(cache): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def one_process(checkpoint, tmp_path, *args):
    done = invoke("robustness", checkpoint, *CELLS, *args, "--cache-dir", tmp_path / "cache-1",
                  "--out", tmp_path / "one.h5")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_two_ranks_score_and_cache_exactly_as_one_process(tmp_path, checkpoints):
    reference = one_process(checkpoints[0], tmp_path, "--severities", "1,5")
    ran = torchrun("robustness", checkpoints[0], *CELLS, "--severities", "1,5", "--cache-dir", tmp_path / "cache-2",
                   "--out", tmp_path / "two.h5")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)  # rank 0's alone: the others print nothing
    assert [r["cells_computed"] for r in report] == [5]
    assert without_times(report) == without_times(reference)
    assert stored(tmp_path / "two.h5") == stored(tmp_path / "one.h5")
    assert {c["samples"] for c in report[0]["cells"]} == {360}
    assert len(cache_files(tmp_path / "cache-2")) == 8  # 4 cells: images and key each
    assert cache_files(tmp_path / "cache-2") == cache_files(tmp_path / "cache-1")
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob("*.tmp-*"))


def test_a_file_with_some_cells_done_is_completed_under_torchrun(tmp_path, checkpoints):
    reference = one_process(checkpoints[0], tmp_path, "--severities", "1,5")
    partial = tmp_path / "partial.h5"
    first = invoke("robustness", checkpoints[0], *CELLS, "--severities", "1", "--cache-dir", tmp_path / "cache-2",
                   "--out", partial)
    assert first.exit_code == 0, first.stderr
    done = read_records(partial)[0].cells
    ran = torchrun("robustness", checkpoints[0], *CELLS, "--severities", "1,5", "--cache-dir", tmp_path / "cache-2",
                   "--out", partial)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert [r["cells_computed"] for r in report] == [2]  # only severity 5 of both corruptions
    assert read_records(partial)[0].cells[:3] == done  # the finished cells are kept as they were
    assert without_times(report) == without_times(reference)
    assert stored(partial) == stored(tmp_path / "one.h5")
    assert cache_files(tmp_path / "cache-2") == cache_files(tmp_path / "cache-1")
    assert [c.samples for c in read_records(partial)[0].cells] == [360] * 5


def _one_rank_fails(rank, folder):
    def cache_full():
        if rank == 1:
            raise UserError("the cache folder is full")
        return rank
    told = []
    for step in (lambda: on_every_rank(cache_full, what="testing"),
                 lambda: on_main_rank(lambda: f"from {rank}", what="testing")):
        try:
            told.append(step())
        except UserError as err:
            told.append(str(err))
    torch.save(told, f"{folder}/rank{rank}.pt")


def test_a_step_that_fails_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    run_ranks(_one_rank_fails, tmp_path, str(tmp_path))
    assert torch.load(tmp_path / "rank0.pt") == ["rank 1 stopped: the cache folder is full", "from 0"]
    assert torch.load(tmp_path / "rank1.pt") == ["the cache folder is full", "from 0"]
