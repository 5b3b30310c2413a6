"""`cosine` under a real `torchrun` of 2 ranks against the same command in one process: an uneven
number of pairs (3: rank 0 measures pairs 0 and 1, rank 1 pair 2) gives the same per-pair values
and means bit for bit, a file with one checkpoint done is completed, and rank 0's failure to
lock --out ends both ranks at once with one line."""

import json

import numpy as np

from alignsam_diag.files import output_lock
from alignsam_diag.store.alignment import read_records
from conftest import invoke
from distributed_harness import first_error, torchrun

FAST = ["--pairs", "3", "--device", "cpu", "--quiet", "--json"]


def one_process(*args):
    done = invoke("cosine", *args, *FAST)
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def without_times(report):
    for record in report:
        record.pop("seconds")
    return report


def assert_same_records(path, reference):
    """Every checkpoint of ``reference`` in ``path`` with the same settings, passes and per-pair values."""
    ours, theirs = read_records(path), read_records(reference)
    assert list(ours) == list(theirs)
    for checkpoint, record in theirs.items():
        assert ours[checkpoint].settings == record.settings and ours[checkpoint].passes == record.passes
        assert ours[checkpoint].values.shape == (3, 9)
        np.testing.assert_array_equal(ours[checkpoint].values, record.values)


def test_two_ranks_measure_their_pairs_exactly_as_one_process(tmp_path, checkpoints):
    reference = one_process(checkpoints[0], "--out", tmp_path / "one.h5")
    ran = torchrun("cosine", checkpoints[0], *FAST, "--out", tmp_path / "two.h5")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)  # rank 0's alone: the others print nothing
    assert without_times(report) == without_times(reference)
    assert_same_records(tmp_path / "two.h5", tmp_path / "one.h5")
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob("*.tmp-*"))


def test_a_file_with_one_checkpoint_done_is_completed_under_torchrun(tmp_path, checkpoints):
    reference = one_process(*checkpoints, "--out", tmp_path / "one.h5")
    partial = tmp_path / "partial.h5"
    one_process(checkpoints[0], "--out", partial)
    kept = read_records(partial)[str(checkpoints[0])]
    ran = torchrun("cosine", *checkpoints, *FAST, "--out", partial)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report[0]["seconds"] == kept.seconds  # read back, not measured again
    assert without_times(report) == without_times(reference)
    assert_same_records(partial, tmp_path / "one.h5")


def test_a_locked_out_ends_every_rank_at_once_with_one_line(tmp_path, checkpoints):
    out = tmp_path / "held.h5"
    with output_lock(out):  # another run writes it; --dist-timeout is far beyond the guard: no rank may wait for it
        ran = torchrun("cosine", checkpoints[0], *FAST, "--out", out, timeout_s=3600, hang_guard_s=120)
    assert ran.returncode != 0 and not out.exists()
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert first_error(ran.stderr) in errors and len(errors) == 2, ran.stderr
    assert sorted(line.split(":")[1] for line in errors) == [" rank 0 of 2", " rank 1 of 2"]
    assert all("another alignsam-diag run" in line and "is writing it" in line for line in errors), errors
    assert "rank 0 stopped: " in next(line for line in errors if "rank 1 of 2" in line)
