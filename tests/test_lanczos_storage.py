"""Saving an unfinished Lanczos run costs O(P) per product: the bytes written per save are one
basis row and a few hundred bytes, whatever the step and whatever else the file holds; a run
killed between writing a row and committing it resumes from the committed rows, bit for bit; a
full disk during an append is the one-line DiskFullError and the run continues once space is freed.

The operator is a diagonal matrix (its products cost nothing), so that rows can be large."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.files import DiskFullError
from alignsam_diag.store.spectrum import EigsRecord, read_records, save_state, write_record

IO = Path("/proc/self/io")


class Diagonal:
    """diag(d) of size P with distinct entries: a symmetric operator whose products are free."""

    def __init__(self, size: int) -> None:
        self.d = torch.linspace(0.5, 4.0, size, dtype=torch.float64) ** 3
        self.shape, self.device = (size, size), torch.device("cpu")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v


def bytes_written() -> int:
    """Bytes this process has handed to write calls so far (``wchar`` of /proc/self/io)."""
    return next(int(line.split()[1]) for line in IO.read_text().splitlines() if line.startswith("wchar"))


def saving_run(path: Path, size: int, max_iter: int, checkpoint: str = "run.pt", **kwargs):
    """A Lanczos run on ``Diagonal(size)`` that saves itself into ``path`` after every product;
    returns (result, {step: bytes written by its save})."""
    record = EigsRecord(checkpoint, {}, ["w"], size)
    written = {}

    def save(state):
        record.state = state.saved()
        before = bytes_written()
        save_state(path, record)
        written[state.steps] = bytes_written() - before

    return lanczos(Diagonal(size), k=3, tol=1e-14, max_iter=max_iter, on_step=save, **kwargs), written


@pytest.mark.skipif(not IO.exists(), reason="needs /proc/self/io")
@pytest.mark.parametrize("other_floats", [0, 2_000_000])
def test_bytes_per_save_are_one_row_whatever_the_step_and_the_other_groups(tmp_path, other_floats):
    size = 20_000
    row = 8 * size
    path = tmp_path / "eigs.h5"
    if other_floats:  # a finished group of another checkpoint, 8 MB: never rewritten by a save
        other = lanczos(Diagonal(other_floats // 5), k=5, tol=1e-3, max_iter=30, eigenvectors=True)
        write_record(path, EigsRecord("other.pt", {}, ["w"], other_floats // 5, spectrum=other))
    _, written = saving_run(path, size, max_iter=40)
    assert written[1] > row  # the first save writes the whole record (the room for 41 rows reserved)
    appends = {written[step] for step in range(2, 41)}
    assert len(appends) == 1, appends  # the same at step 2 and at step 40
    assert row < appends.pop() < row + 2048
    state = read_records(path)["run.pt"].state
    assert state.steps == 40 and state.limit == 40


@pytest.mark.skipif(not IO.exists(), reason="needs /proc/self/io")
def test_disk_usage_grows_by_one_row_per_save(tmp_path):
    size = 50_000
    path = tmp_path / "eigs.h5"
    record = EigsRecord("run.pt", {}, ["w"], size)
    usage = {}

    def save(state):
        record.state = state.saved()
        save_state(path, record)
        usage[state.steps] = (path.stat().st_size, path.stat().st_blocks * 512)

    lanczos(Diagonal(size), k=3, tol=1e-14, max_iter=30, on_step=save)
    assert len({apparent for apparent, _ in usage.values()}) == 1  # the rows were reserved at the first save
    growth = (usage[30][1] - usage[2][1]) / 28
    assert 0.9 * 8 * size <= growth <= 8 * size + 8192


CHILD = """
import os, signal, sys
import h5py
sys.path.insert(0, {tests!r})
from test_lanczos_storage import saving_run

modify = h5py.AttributeManager.modify

def killed_before_commit(self, name, value):
    if name == "steps" and value == 4:  # row 4 is written, flushed and fsynced; steps still says 3
        os.kill(os.getpid(), signal.SIGKILL)
    return modify(self, name, value)

h5py.AttributeManager.modify = killed_before_commit
saving_run(__import__("pathlib").Path(sys.argv[1]), 2000, max_iter=20)
"""


def test_a_process_killed_between_row_and_commit_resumes_from_the_committed_rows(tmp_path):
    path = tmp_path / "eigs.h5"
    child = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent)), str(path)],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with h5py.File(path, "r") as f:
        saved = f["run.pt/lanczos_state"]
        assert saved.attrs["steps"] == 3 and np.abs(saved["basis"][4]).max() > 0  # written, not committed
    state = read_records(path)["run.pt"].state
    assert state.steps == 3
    reference = lanczos(Diagonal(2000), k=3, tol=1e-14, max_iter=20, eigenvectors=True)
    resumed, _ = saving_run(path, 2000, max_iter=20, state=state, eigenvectors=True)
    assert resumed.num_products == reference.num_products == 20
    np.testing.assert_array_equal(resumed.eigenvalues, reference.eigenvalues)
    np.testing.assert_array_equal(resumed.residuals, reference.residuals)
    torch.testing.assert_close(resumed.eigenvectors, reference.eigenvectors, rtol=0, atol=0)


@pytest.fixture
def small_disk(tmp_path):
    from test_outputs import tmpfs  # here, so that the child process above imports no CLI

    with tmpfs(tmp_path / "disk", size="1m") as disk:
        yield disk


def test_full_disk_during_an_append_is_the_one_line_error_and_the_run_continues(small_disk):
    size = 20_000  # rows of 160 kB: the first save fits in 1 MiB, the sixth row does not
    path = small_disk / "eigs.h5"
    with pytest.raises(DiskFullError) as caught:
        saving_run(path, size, max_iter=40)
    assert str(caught.value) == str(DiskFullError(path, os.strerror(28)))
    assert "\n" not in str(caught.value)
    state = read_records(path)["run.pt"].state
    assert 2 <= state.steps < 40
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    resumed, _ = saving_run(path, size, max_iter=40, state=state)
    reference = lanczos(Diagonal(size), k=3, tol=1e-14, max_iter=40)
    np.testing.assert_array_equal(resumed.eigenvalues, reference.eigenvalues)
    assert resumed.num_products == reference.num_products
