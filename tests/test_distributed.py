"""alignsam_diag.distributed: shards, the identity alone, and failures that end a job within the
collective timeout with one clear line (real gloo groups of forked processes)."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alignsam_diag import distributed
from alignsam_diag.errors import UserError
from distributed_harness import first_error, run_ranks, torchrun


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (7, 2), (8, 3), (10, 4), (3, 5)])
def test_shards_cover_the_range_in_order_with_sizes_within_one(n: int, world: int) -> None:
    shards = [distributed.Group(rank, world).shard(n) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_alone_every_helper_is_the_identity() -> None:
    assert not dist.is_initialized() and distributed.current() == distributed.Group(0, 1)
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t and torch.equal(t, torch.arange(3.0))
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(5) == 5
    distributed.agree(None)
    with pytest.raises(UserError, match="^boom$"):
        distributed.agree(UserError("boom"))
    with pytest.raises(ValueError):  # not a collective failure: passes through unchanged
        with distributed.collectives("testing"):
            raise ValueError("not ours")


def _collectives(rank: int, folder: str) -> None:
    value = torch.tensor([rank + 1.0], dtype=torch.float64)
    distributed.all_reduce_sum(value)
    gathered = distributed.all_gather_objects(("rank", rank))
    told = distributed.broadcast_object(f"from {rank}")
    tensor = torch.full((2,), float(rank))
    distributed.broadcast_tensors([tensor])
    group = distributed.current()
    try:
        distributed.agree(UserError("the output file is locked") if rank == 0 else None)
        agreed = "no error"
    except UserError as err:
        agreed = str(err)
    torch.save({"sum": value.item(), "gathered": gathered, "told": told, "tensor": tensor.tolist(),
                "group": (group.rank, group.world_size), "agreed": agreed}, f"{folder}/rank{rank}.pt")


def test_collectives_over_two_real_ranks(tmp_path: Path) -> None:
    run_ranks(_collectives, tmp_path, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, result in enumerate(results):
        assert result["sum"] == 3.0
        assert result["gathered"] == [("rank", 0), ("rank", 1)]
        assert result["told"] == "from 0" and result["tensor"] == [0.0, 0.0]
        assert result["group"] == (rank, 2)
    assert results[0]["agreed"] == "the output file is locked"
    assert results[1]["agreed"] == "rank 0 stopped: the output file is locked"


def _failing_rank(rank: int, folder: str, how: str, ready: multiprocessing.Event) -> None:
    """Rank 1 dies or hangs before the collective; rank 0 writes what the collective raised."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=4))
    distributed._settings["timeout_s"] = 4
    distributed.barrier()  # both ranks are up
    if rank == 1:
        ready.set()
        if how == "dies":
            os._exit(3)
        signal.pause()  # hangs until the test kills it
    ready.wait()
    try:
        with distributed.collectives("summing the test values"):
            distributed.all_reduce_sum(torch.ones(1))
        Path(folder, "rank0.txt").write_text("no error")
    except UserError as err:
        Path(folder, "rank0.txt").write_text(f"{type(err).__name__}: {err}")


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_ends_the_collective_with_one_clear_line(tmp_path: Path, how: str) -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    ranks = [context.Process(target=_failing_rank, args=(rank, str(tmp_path), how, ready)) for rank in range(2)]
    for process in ranks:
        process.start()
    ranks[0].join(timeout=120)  # a guard against a hang only: the timeout is 4 s
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert ranks[0].exitcode == 0, "rank 0 did not come back from the failed collective"
    text = (tmp_path / "rank0.txt").read_text()
    assert text.startswith("PeerLost: rank 0 of 2: lost contact with the other ranks while summing the test values")
    assert "--dist-timeout 4 s" in text and "rerun the same command" in text and "\n" not in text


def test_commands_that_do_not_scale_out_refuse_under_torchrun(tmp_path: Path) -> None:
    result = torchrun("inspect", tmp_path / "missing.pt")
    assert result.returncode != 0
    line = first_error(result.stderr)
    assert line.startswith(("error: rank 0 of 2: ", "error: rank 1 of 2: "))
    assert line.endswith("`inspect` runs in one process; start it without torchrun (train, eigs, landscape, "
                         "robustness and cosine scale out).")
