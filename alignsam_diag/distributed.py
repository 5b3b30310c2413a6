"""Several processes on one job, through ``torch.distributed`` (launched by ``torchrun``).

A process started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment (:func:`launched`); :func:`join` makes it a member of the process group (NCCL for
CUDA, gloo for the CPU) with a timeout on every collective, so a rank that dies or hangs ends
the job within that time instead of blocking it forever. One process alone never joins a group,
and every helper here is then the identity (:func:`current` is rank 0 of 1): single-process
results do not change.

The analyses split their work with :meth:`Group.shard` (contiguous blocks: rank r of W takes
items ⌊rN/W⌋ … ⌊(r+1)N/W⌋ − 1) and combine it with :func:`all_reduce_sum` or
:func:`all_gather_objects`. Only rank 0 (:attr:`Group.is_main`) locks, reads and writes result
files (:func:`main_rank_lock`, :func:`on_main_rank`); a step that can fail on one rank is taken
through :func:`on_every_rank` or :func:`on_main_rank`, which end with :func:`agree`, so that a
failure anywhere ends every rank at once with one line instead of leaving the others waiting for
a partner that gave up. A collective that fails raises :class:`PeerLost` (inside
:func:`collectives`), one line saying which rank lost contact and that the finished work on
disk is kept.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError, first_line
from .files import output_lock

T = TypeVar("T")

#: Seconds a collective may wait for the other ranks before the job gives up (``--dist-timeout``).
DEFAULT_TIMEOUT_S = 600.0


class PeerLost(UserError):
    """A collective failed: another rank died, hung past the timeout, or the group broke."""


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's contiguous block of ``range(n)``; the blocks of all ranks cover it in order,
        their sizes differ by at most one (a rank may get none when n < world_size)."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def label(self) -> str:
        """``"rank 1 of 2: "`` under several processes, ``""`` alone (a prefix for messages)."""
        return f"rank {self.rank} of {self.world_size}: " if self.distributed else ""


def launched() -> bool:
    """Whether this process was started as one of several by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Group:
    """The group this process belongs to (rank 0 of 1 when it joined none)."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def join(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Group:
    """Join the process group ``torchrun`` set up (a no-op when not launched or already joined):
    NCCL when ``device`` is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise, every
    collective bounded by ``timeout_s`` seconds."""
    if not launched() or dist.is_initialized():
        return current()
    if timeout_s <= 0:
        raise UserError(f"--dist-timeout {timeout_s:g}: must be a positive number of seconds.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:
        raise UserError(f"could not join the torchrun process group ({backend}): {first_line(err)}; "
                        "start the job with torchrun (it sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE).") from None
    _settings["timeout_s"] = timeout_s
    return current()


def leave() -> None:
    """Leave the process group (if this process joined one): once every rank got here (a rank
    that left early could cut a peer's last collective short) and what the job held of the group
    (a DDP model's reducer) is freed, so nothing touches the group after it is gone."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(RuntimeError):  # a peer is gone: leave anyway
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


_settings = {"timeout_s": DEFAULT_TIMEOUT_S}


#: Words in the message of a RuntimeError that gloo or NCCL raise when a peer is gone or late.
_COMMUNICATION_FAILURES = ("gloo", "nccl", "connection", "timed out", "timeout", "processgroup", "peer")


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective (not, say, an out-of-memory error in the same block)."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(word in str(err).lower() for word in _COMMUNICATION_FAILURES)


@contextlib.contextmanager
def collectives(what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into :class:`PeerLost`: which rank noticed, while
    doing ``what``, and that finished work on disk stays valid for a rerun. Other errors pass
    unchanged; alone, everything does."""
    try:
        yield
    except RuntimeError as err:
        group = current()
        if not group.distributed or not _lost_peer(err):
            raise
        raise PeerLost(
            f"{group.label()}lost contact with the other ranks while {what} (a rank died, or did not answer within "
            f"--dist-timeout {_settings['timeout_s']:g} s): {first_line(err)}. Finished work on disk is kept; "
            "rerun the same command to continue.") from None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (every rank gets the same result); returns it."""
    if current().distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (picklable, produced by this program — never read from a file), in
    rank order, on every rank; ``[value]`` alone."""
    group = current()
    if not group.distributed:
        return [value]
    gathered: list[Any] = [None] * group.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: T, source: int = 0) -> T:
    """Rank ``source``'s ``value`` on every rank (the others' arguments are ignored)."""
    if not current().distributed:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def broadcast_tensors(tensors: Sequence[torch.Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``source``'s, in place."""
    if current().distributed:
        for tensor in tensors:
            dist.broadcast(tensor, src=source)


def barrier() -> None:
    """Wait until every rank gets here (bounded by the timeout)."""
    if current().distributed:
        dist.barrier()


def agree(error: BaseException | None) -> None:
    """Raise on every rank if any rank met an error in a step they all took (e.g. checking the
    output file on rank 0): the lowest failing rank's :class:`UserError` is re-raised everywhere,
    so no rank waits for a partner that has already given up."""
    failures = all_gather_objects(str(error) if isinstance(error, UserError) else
                                  (f"{type(error).__name__}: {error}" if error is not None else None))
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        if failure is not None:
            raise UserError(f"rank {rank} stopped: {failure}")


def _attempt(step: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[Optional[T], Optional[Exception]]:
    try:
        return step(*args, **kwargs), None
    except Exception as err:  # noqa: BLE001 — handed to agree(), which raises it here and tells the others
        return None, err


def _around(what: Optional[str]) -> contextlib.AbstractContextManager[None]:
    return collectives(what) if what else contextlib.nullcontext()


def on_every_rank(step: Callable[..., T], *args: Any, what: Optional[str] = None, **kwargs: Any) -> T:
    """``step(*args, **kwargs)`` on every rank; if it fails on any rank, every rank raises (:func:`agree`).
    ``what`` names the step for a failed collective's message (else the enclosing
    :func:`collectives` block does). Alone, the plain call."""
    if not current().distributed:
        return step(*args, **kwargs)
    value, error = _attempt(step, *args, **kwargs)
    with _around(what):
        agree(error)
    return value  # type: ignore[return-value]


def on_main_rank(step: Callable[..., T], *args: Any, what: Optional[str] = None) -> T:
    """``step(*args)`` on rank 0 only (reading or writing a file, a timing decision), its result
    (picklable, made by this program) on every rank; if it fails there, every rank raises.
    Alone, the plain call."""
    group = current()
    if not group.distributed:
        return step(*args)
    value, error = _attempt(step, *args) if group.is_main else (None, None)
    with _around(what):
        agree(error)
        return broadcast_object(value)


@contextlib.contextmanager
def main_rank_lock(path: str | os.PathLike, folder: bool = False) -> Iterator[None]:
    """:func:`~alignsam_diag.files.output_lock` of ``path`` held by rank 0 alone for the block; a
    refusal there (another run writes it, an unwritable folder) is raised on every rank."""
    with contextlib.ExitStack() as held:
        on_main_rank(lambda: held.enter_context(output_lock(path, folder)) and None, what=f"locking {path}")
        yield
