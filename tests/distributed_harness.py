"""Real multi-process runs for the torch.distributed tests, on the CPU with gloo.

- :func:`torchrun` runs the CLI under a real ``torchrun --standalone`` (the launcher users run),
  each rank a fresh process with one intra-op thread.
- :func:`run_ranks` runs a library function in ``world`` forked processes that form a real gloo
  group (file rendezvous), for tests finer than a command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def rank_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of a launched rank: this checkout importable, one thread per rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def torchrun_command(*args: Any, nproc: int = 2, timeout_s: Optional[float] = None) -> list[str]:
    """The command line of ``torchrun --standalone --nproc_per_node N -m alignsam_diag.cli ARGS``
    (``timeout_s``: the CLI's ``--dist-timeout``)."""
    cli = ["-m", "alignsam_diag.cli", *(["--dist-timeout", str(timeout_s)] if timeout_s else [])]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *cli, *map(str, args)]


def torchrun(*args: Any, nproc: int = 2, timeout_s: Optional[float] = None,
             hang_guard_s: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI under torchrun and wait for it (``hang_guard_s`` only guards against a hang)."""
    return subprocess.run(torchrun_command(*args, nproc=nproc, timeout_s=timeout_s), env=rank_env(),
                          capture_output=True, text=True, timeout=hang_guard_s, cwd=ROOT)


def first_error(stderr: str) -> str:
    """The first ``error: …`` line in a launcher's stderr (torchrun adds its own report after it)."""
    return next((line for line in stderr.splitlines() if line.startswith("error: ")), "")


def _rank_main(rank: int, world: int, folder: str, fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], folder: Path, *args: Any, world: int = 2) -> None:
    """``fn(rank, *args)`` in ``world`` forked processes of one gloo group; raises if any rank
    fails. ``folder`` holds the rendezvous file (and is where ``fn`` should leave its results)."""
    import torch._dynamo  # noqa: F401  (DDP imports it when built: import it once, before forking)

    Path(folder).mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank_main, args=(world, str(folder), fn, args), nprocs=world, join=True,
                       start_method="fork")
