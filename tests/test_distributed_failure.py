"""A rank that dies or hangs in a real torchrun job: the job ends non-zero within a bounded time
with a clear line, the surface on disk stays valid, and rerunning the same command finishes it
with the single-process values (issue 17, point 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from alignsam_diag.store.landscape import read_landscape
from conftest import invoke
from distributed_harness import ROOT, first_error, rank_env, torchrun, torchrun_command

GRID = ["--grid", "25", "--samples", "300", "--batch-size", "150", "--points-per-pass", "3", "--device", "cpu",
        "--save-every", "0"]
GUARD_S = 600  # only guards against a hang: every wait below is for a state


def cells_done(path: Path) -> int:
    return int(read_landscape(path).groups[0].surface.done.sum()) if path.exists() else 0


def worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with ``RANK=rank`` (read from /proc, the agent's children)."""
    for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher.pid}")


def start(tmp_path: Path, checkpoint: Path, out: Path, timeout_s: float) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "stderr.txt"
    job = subprocess.Popen(torchrun_command("landscape", checkpoint, *GRID, "--out", out, timeout_s=timeout_s),
                           env=rank_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    return job, log


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def finishes_like_one_process(tmp_path: Path, checkpoint: Path, out: Path) -> None:
    rerun = torchrun("landscape", checkpoint, *GRID, "--out", out)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    alone = invoke("landscape", checkpoint, *GRID, "--out", tmp_path / "alone.h5", "--json")
    assert alone.exit_code == 0, alone.stderr
    resumed, single = (read_landscape(p).groups[0].surface for p in (out, tmp_path / "alone.h5"))
    assert resumed.done.all()
    assert abs(resumed.loss - single.loss).max() <= 1e-5 * abs(single.loss).max()
    assert abs(resumed.acc - single.acc).max() <= 1e-6
    assert json.loads(alone.stdout)["results"][0]["cells_done"] == 625


def test_a_killed_rank_ends_the_job_and_the_rerun_finishes_it(tmp_path: Path, checkpoints) -> None:
    out = tmp_path / "surface.h5"
    job, log = start(tmp_path, checkpoints[0], out, timeout_s=60)
    wait_for(lambda: cells_done(out) >= 12 or job.poll() is not None, "12 cells on disk")
    assert job.poll() is None, log.read_text()[-2000:]
    os.kill(worker(job, 1), signal.SIGKILL)
    job.wait(timeout=GUARD_S)
    stderr = log.read_text()
    assert job.returncode != 0
    assert "rank      : 1" in stderr and "SIGKILL" in stderr  # torchrun's report names the rank that died
    assert 12 <= cells_done(out) < 625  # what was finished is on disk, in a readable file
    finishes_like_one_process(tmp_path, checkpoints[0], out)


def test_a_hung_rank_ends_the_job_within_the_timeout_with_one_clear_line(tmp_path: Path, checkpoints) -> None:
    out = tmp_path / "surface.h5"
    job, log = start(tmp_path, checkpoints[0], out, timeout_s=5)
    wait_for(lambda: cells_done(out) >= 12 or job.poll() is not None, "12 cells on disk")
    assert job.poll() is None, log.read_text()[-2000:]
    hung = worker(job, 1)
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: first_error(log.read_text()) != "", "rank 0's error line")
    noticed = time.monotonic() - stopped
    os.kill(hung, signal.SIGCONT)  # let torchrun's SIGTERM reach it (else torchrun waits out its grace period)
    job.wait(timeout=GUARD_S)
    line = first_error(log.read_text())
    assert job.returncode != 0
    assert line.startswith("error: rank 0 of 2: lost contact with the other ranks while computing the landscape")
    assert "--dist-timeout 5 s" in line and "rerun the same command to continue" in line
    assert noticed < 5 + 60, f"rank 0 noticed the hang after {noticed:.0f} s"  # the timeout, plus a busy machine
    assert 12 <= cells_done(out) < 625  # readable, and resumable as the killed job's file above
