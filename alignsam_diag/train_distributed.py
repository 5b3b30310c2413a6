"""The training loop's pieces for several processes (``torchrun --nproc_per_node W train``).

- ``batch_size`` (|B^t|) and ``aux_batch_size`` (|B^a|) are *global*: the samples of one
  optimizer step over all ranks. Rank r takes its contiguous block (:meth:`Group.shard`) of each
  global batch of the epoch's seeded order, the order one process uses, and draws |B^a|/W
  auxiliary samples per step from its own seeded stream (:func:`check_world` refuses sizes that
  do not divide).
- Each rank's train loss is its part of the global batch's mean (:func:`rank_loss`), so the
  gradient the optimizer averages over the ranks is exactly the global mean, also when the last
  batch of an epoch splits unevenly.
- The model is wrapped in ``DistributedDataParallel`` (:func:`wrap`); the SAM-family optimizer
  runs every pass inside ``no_sync()`` (per-rank perturbation) and all-reduces the final
  gradient once. BatchNorm: no SyncBatchNorm, each rank normalises with its own slice's batch
  statistics, and the running statistics are rank 0's, broadcast to every rank before each
  step and before evaluation (:func:`sync_buffers`), which is what DDP's
  ``broadcast_buffers=True`` does before each forward (the optimizer's ``no_sync()`` passes
  would otherwise skip DDP's own broadcast).
- Only rank 0 locks the run folder and writes files (:func:`main_rank_folder`,
  :func:`alignsam_diag.distributed.on_main_rank`); its refusal stops every rank with the same message.

In one process (W = 1) every piece is the identity: results are those of a single process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .distributed import Group
from .errors import OptionError

T = TypeVar("T")

#: What a collective that fails during training says it was doing (:func:`distributed.collectives`).
DOING = "training"


def check_world(batch_size: int, aux_batch_size: Optional[int], train_samples: int, tracked: Mapping[str, int],
                group: Group) -> None:
    """Refuse, with one line, a run that ``group.world_size`` ranks cannot run: a global
    ``batch_size`` or ``aux_batch_size`` (None: no auxiliary batch) that is not a multiple of W,
    a last batch of the epoch with fewer samples than ranks (``train_samples`` in the training
    split), or step tracking (``tracked``: the ``track_*_every`` options by name, 0 off), which
    runs in one process. Nothing is refused in one process."""
    world = group.world_size
    if world == 1:
        return
    if batch_size % world:
        raise OptionError("batch_size", batch_size,
                          f"under torchrun it is the global batch of all {world} ranks and must be a multiple of "
                          f"{world} (each rank takes batch_size/{world}); choose e.g. "
                          f"{max(world, batch_size // world * world)}.")
    if aux_batch_size is not None and aux_batch_size % world:
        raise OptionError("aux_batch_size", aux_batch_size,
                          f"under torchrun |B^a| is global and must be a multiple of the {world} ranks (each rank "
                          f"draws aux_batch_size/{world}); give {{aux_batch_size}} as such a multiple.",
                          mentions=("aux_batch_size",))
    last = train_samples % batch_size
    if 0 < last < world:
        raise OptionError("batch_size", batch_size,
                          f"the epoch's last batch would hold {last} of the {train_samples} training samples, fewer "
                          f"than one per rank ({world}); choose a batch size that leaves at least {world}.")
    for option, every in tracked.items():
        if every:
            raise OptionError(option, every,
                              "step tracking runs in one process; train without it under torchrun and measure "
                              "the run's checkpoints with `alignsam-diag cosine` (or start the run without torchrun).")


def record(batch_size: int, aux_batch_size: Optional[int], group: Group) -> dict[str, Any]:
    """How the run is spread over the ranks, as its checkpoint's ``optimizer.distributed``
    records it: ``world_size``, ``batch_size`` ("global": |B^t| counts all ranks),
    ``per_rank_batch_size`` and ``per_rank_aux_batch_size`` (None without an auxiliary batch)."""
    world = group.world_size
    return {"world_size": world, "batch_size": "global", "per_rank_batch_size": batch_size // world,
            "per_rank_aux_batch_size": None if aux_batch_size is None else aux_batch_size // world}


def wrap(model: nn.Module, device: torch.device, group: Group) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under several ranks (``device_ids`` the rank's
    GPU on CUDA, none on the CPU; buffers broadcast from rank 0); ``model`` itself alone."""
    if not group.distributed:
        return model
    with distributed.collectives(DOING):
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_buffers(model: nn.Module, group: Group) -> None:
    """Overwrite ``model``'s buffers (BatchNorm running statistics) with rank 0's on every rank."""
    if group.distributed:
        distributed.broadcast_tensors(list(model.buffers()))


def rank_loss(out: torch.Tensor, y: torch.Tensor, total: int, world: int) -> torch.Tensor:
    """This rank's part of the mean cross-entropy of a global batch of ``total`` samples, of
    which it holds the logits ``out`` (n × classes) and labels ``y`` (n,): the mean of its own
    samples when the ranks' blocks are equal (n·W = total), else ``sum × W / total``, so the
    average over the ranks is the global batch's mean loss (and its gradient the mean gradient)."""
    if len(y) * world == total:
        return F.cross_entropy(out, y)
    return F.cross_entropy(out, y, reduction="sum") * (world / total)


def reseed(seed: int, group: Group) -> None:
    """Under several ranks, seed the global torch RNG (dropout, stochastic depth) with ``seed``
    (the epoch's, keyed by rank), so that a resumed run replays each epoch; alone, nothing."""
    if group.distributed:
        torch.manual_seed(seed)


@contextlib.contextmanager
def main_rank_folder(run_dir: Path, check: Callable[[], T]) -> Iterator[T]:
    """Rank 0 holds the run folder's ``output_lock`` for the block; then every rank runs
    ``check()`` (refusing a folder that already holds a run, reading the checkpoint to resume:
    reads only). Any failure stops every rank with its message. Yields ``check()``'s result."""
    with distributed.main_rank_lock(run_dir, folder=True):
        yield distributed.on_every_rank(check, what=DOING)
