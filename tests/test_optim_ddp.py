"""DistributedDataParallel (two CPU ranks, gloo): each rank perturbs with its own gradient
(SAM's m-sharpness) and only the final gradient is averaged (DESIGN §5)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from alignsam_diag import optim
from test_optim_common import MLP_SHAPE, SGD_SETTINGS, closure_for, flat, flat_loss, grad, make_batches, mlp

WORLD, STEPS, RHO = 2, 2, 0.2


def rank_batches(rank: int):
    return make_batches(STEPS, MLP_SHAPE, seed=100 + rank)


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)  # forked from a process that may have used its thread pool
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    model = DistributedDataParallel(mlp(torch.float64))
    batches = rank_batches(rank)
    optimizer = optim.create("sam", model.parameters(), model=model, rho=RHO, **SGD_SETTINGS)
    for train_batch, aux_batch in zip(batches.train, batches.aux):
        optimizer.step(closure_for(model, train_batch, aux_batch))
    torch.save(flat(model.module), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def sam_by_hand(per_rank_perturbation: bool) -> torch.Tensor:
    """SAM with SGD momentum + weight decay over the two ranks' batches, on the flat vector."""
    model = mlp(torch.float64)
    theta, buffer = flat(model), None
    lr, momentum, weight_decay = SGD_SETTINGS["lr"], SGD_SETTINGS["momentum"], SGD_SETTINGS["weight_decay"]
    batches = [rank_batches(rank) for rank in range(WORLD)]
    for t in range(STEPS):
        losses = [flat_loss(model, b.train[t]) for b in batches]
        clean = [grad(loss, theta) for loss in losses]
        if per_rank_perturbation:
            points = [theta + RHO * g / g.norm() for g in clean]
        else:
            mean = sum(clean) / WORLD
            points = [theta + RHO * mean / mean.norm()] * WORLD
        d = sum(grad(loss, point) for loss, point in zip(losses, points)) / WORLD + weight_decay * theta
        buffer = d if buffer is None else momentum * buffer + d
        theta = theta - lr * buffer
    return theta


def test_ddp_perturbs_per_rank_and_averages_the_final_gradient(tmp_path: Path) -> None:
    import torch._dynamo  # noqa: F401  (DDP imports it when built: import it once, here, for both forks)

    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    assert torch.equal(ranks[0], ranks[1])
    expected = sam_by_hand(per_rank_perturbation=True)
    torch.testing.assert_close(ranks[0], expected, rtol=0, atol=1e-10)
    assert (sam_by_hand(per_rank_perturbation=False) - expected).abs().max() > 1e-4
