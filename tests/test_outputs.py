"""Outputs are written safely, for real: a full disk (a small tmpfs, and a file-size limit giving
EFBIG) is one clear line with the earlier files intact and no temp file left; a read-only folder
(a tmpfs remounted read-only, which refuses root too) or a name clash is refused before any work;
one writer per output, checked against a real second process, and a SIGKILLed holder leaves
nothing stuck."""

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from alignsam_diag.files import DiskFullError, lock_path, output_lock
from alignsam_diag.models.checkpoint import read_file, save_checkpoint
from alignsam_diag.plots.save import save_figure
from alignsam_diag.store.h5io import write_atomic
from conftest import error_line, invoke

TINY_TRAIN = ["train", "--subset", "64", "--arch-kwargs", '{"width": 4}', "--batch-size", "32", "--device", "cpu"]
MISSING_DATA = ["--dataset", "npz:/nonexistent/data.npz"]  # an input error that only work would find


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "256k") -> Path:
    """A real tmpfs of ``size`` mounted on ``where`` (skip where mounting is not allowed)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        yield disk


@pytest.fixture
def read_only(tmp_path):
    """A folder that refuses every write, root's included (a tmpfs remounted read-only)."""
    with tmpfs(tmp_path / "ro") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield folder


def fill(folder: Path) -> None:
    """Write a filler file until the file system says it is full."""
    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def figure(pixels: int) -> Figure:
    fig = Figure(figsize=(pixels / 150, pixels / 150))
    fig.add_subplot().imshow(np.random.default_rng(0).random((pixels, pixels)))
    return fig


WRITERS = {  # name -> (file name, write(path, size)); size 1 fits in the small disk, 100 does not
    "checkpoint": ("last.pt", lambda p, s: save_checkpoint(p, {"w": torch.arange(1000.0 * s)})),
    "hdf5": ("result.h5", lambda p, s: write_atomic(p, {"w": np.arange(1000.0 * s)})),
    "figure": ("figure.png", lambda p, s: save_figure(figure(8 * s), p)),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_full_disk_keeps_the_previous_file_and_leaves_no_temp_file(small_disk, writer):
    name, write = WRITERS[writer]
    path = small_disk / name
    write(path, 1)
    good = path.read_bytes()
    with pytest.raises(DiskFullError) as caught:
        write(path, 100)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: not written")
    assert "No space left on device" in message and "intact" in message and "free some space" in message
    assert path.read_bytes() == good
    assert os.listdir(small_disk) == [name]


def test_file_size_limit_is_reported_as_efbig_with_the_previous_file_intact(tmp_path):
    """A real EFBIG: a child process under RLIMIT_FSIZE (SIGXFSZ ignored) writes a checkpoint."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})
    good = path.read_bytes()
    child = ("import resource, signal, sys, torch\n"
             "from alignsam_diag.models.checkpoint import save_checkpoint\n"
             "from alignsam_diag.files import DiskFullError\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
             "try:\n"
             "    save_checkpoint(sys.argv[1], {'w': torch.zeros(100_000)})\n"
             "except DiskFullError as err:\n"
             "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(f"{path}: not written") and "File too large" in done.stdout
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["last.pt"]


def test_train_on_a_full_disk_says_resume_and_resumes_once_space_is_freed(small_disk):
    run = small_disk / "run"
    assert invoke(*TINY_TRAIN, "--epochs", "1", "--out", run).exit_code == 0
    good = (run / "last.pt").read_bytes()
    fill(small_disk)
    line = error_line(invoke(*TINY_TRAIN, "--epochs", "2", "--out", run, "--resume", "--quiet"))
    assert line.startswith(f"error: {run / 'last.pt'}: not written") and line.endswith("rerun with --resume.")
    assert (run / "last.pt").read_bytes() == good
    assert sorted(os.listdir(run)) == ["history.h5", "last.pt"]  # no temp file, no lock file
    (small_disk / "filler").unlink()
    assert invoke(*TINY_TRAIN, "--epochs", "2", "--out", run, "--resume").exit_code == 0
    assert read_file(run / "last.pt")["epoch"] == 2


def _read_only_commands(folder: Path, ckpt: Path, tmp: Path) -> dict[str, tuple[list, Path]]:
    """command name -> (arguments, the refused output); each would fail later on its input."""
    return {
        "train": ([*TINY_TRAIN, *MISSING_DATA, "--out", folder / "run"], folder / "run"),
        "eigs": (["eigs", ckpt, *MISSING_DATA, "--device", "cpu", "--out", folder / "e.h5"], folder / "e.h5"),
        "landscape": (["landscape", ckpt, *MISSING_DATA, "--device", "cpu", "--out", folder / "l.h5"],
                      folder / "l.h5"),
        "figures history": (["figures", "history", tmp / "no-run", "--out", folder / "h.png"], folder / "h.png"),
        "figures density": (["figures", "density", tmp / "none.h5", "--out", folder / "d.pdf"], folder / "d.pdf"),
        "figures landscape": (["figures", "landscape", tmp / "none.h5", "--out", folder / "figs"], folder / "figs"),
    }


@pytest.mark.parametrize("command", ["train", "eigs", "landscape", "figures history", "figures density",
                                     "figures landscape"])
def test_a_read_only_out_is_refused_before_any_work(read_only, checkpoints, tmp_path, command):
    args, out = _read_only_commands(read_only, checkpoints[0], tmp_path)[command]
    line = error_line(invoke(*args))
    assert line.startswith(f"error: {out}: cannot write in") and "(Read-only file system)" in line
    assert os.listdir(read_only) == []


@pytest.mark.parametrize("case", ["train onto a file", "train below a file", "eigs onto a folder",
                                  "landscape onto a folder", "figure of another format", "figure folder onto a file"])
def test_name_clashes_of_out_are_refused_before_any_work(checkpoints, tmp_path, case):
    (tmp_path / "file").write_text("not a run folder")
    (tmp_path / "folder").mkdir()
    ckpt = checkpoints[0]
    args, expected = {
        "train onto a file": ([*TINY_TRAIN, *MISSING_DATA, "--out", tmp_path / "file"], "is a file, not a folder"),
        "train below a file": ([*TINY_TRAIN, *MISSING_DATA, "--out", tmp_path / "file" / "run"],
                               f"{tmp_path / 'file'} is a file, not a folder"),
        "eigs onto a folder": (["eigs", ckpt, *MISSING_DATA, "--device", "cpu", "--out", tmp_path / "folder"],
                               "is a folder; --out needs a file name"),
        "landscape onto a folder": (["landscape", ckpt, *MISSING_DATA, "--device", "cpu", "--out",
                                     tmp_path / "folder"], "is a folder; --out needs a file name"),
        "figure of another format": (["figures", "history", tmp_path / "no-run", "--out",
                                      tmp_path / "figures" / "h.svg"], "as .png or .pdf"),
        "figure folder onto a file": (["figures", "history", tmp_path / "no-run", "--out", tmp_path / "file"],
                                      "is a file, not a folder"),
    }[case]
    assert expected in error_line(invoke(*args))
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"] and os.listdir(tmp_path / "folder") == []


HOLDER = """import contextlib, sys
from alignsam_diag.files import output_lock
with contextlib.ExitStack() as stack:
    for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
        stack.enter_context(output_lock(path, folder=kind == "folder"))
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_one_writer_per_output_and_a_killed_holder_leaves_nothing_stuck(checkpoints, tmp_path, cli_env):
    run, surface, eigs_file = tmp_path / "run", tmp_path / "surface.h5", tmp_path / "eigs.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "folder", str(run), "file", str(surface),
                               "file", str(eigs_file)], env=cli_env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        landscape = ["landscape", checkpoints[0], "--dim", "1", "--grid", "3", "--samples", "64", "--device", "cpu",
                     "--out", surface]
        eigs = ["eigs", checkpoints[0], "--k", "1", "--samples", "64", "--max-iter", "8", "--device", "cpu",
                "--out", eigs_file]
        for args, out in (([*TINY_TRAIN, "--epochs", "1", "--out", run], run), (landscape, surface), (eigs, eigs_file)):
            assert error_line(invoke(*args)) == (f"error: {out}: another alignsam-diag run (pid {holder.pid}) is "
                                                 "writing it; wait until it ends, or choose another --out.")
        assert not surface.exists() and not eigs_file.exists() and os.listdir(run) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(run, folder=True).exists()  # left by the killed holder, but no longer locked
    for args in ([*TINY_TRAIN, "--epochs", "1", "--out", run], landscape, eigs):
        assert invoke(*args).exit_code == 0
    assert sorted(os.listdir(run)) == ["history.h5", "last.pt"]
    assert sorted(os.listdir(tmp_path)) == ["eigs.h5", "run", "surface.h5"]  # lock files removed on exit


def test_lock_is_reentrant_in_a_process_and_exclusive_for_other_open_files(tmp_path):
    out = tmp_path / "result.h5"
    with output_lock(out):
        with output_lock(out):
            pass
        with open(lock_path(out)) as other, pytest.raises(BlockingIOError):  # still held after the inner exit
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert os.listdir(tmp_path) == []


def test_a_failed_job_leaves_no_folders_behind(tmp_path):
    assert "nonexistent" in error_line(invoke(*TINY_TRAIN, *MISSING_DATA, "--out", tmp_path / "new" / "deep" / "run"))
    assert os.listdir(tmp_path) == []
