"""Loss and accuracy on a grid of points θ + x·d₁ (+ y·d₂) around a model's parameters θ.

- :func:`evaluate_surface` fills the missing cells of a :class:`Surface` for one model;
- :func:`compute_landscapes` does it for several checkpoints with one set of options
  (:class:`LandscapeSpec`), resumably: the HDF5 file is rewritten atomically every few seconds
  with a ``done`` mask, and a rerun with the same options computes only the missing cells.

Two evaluation paths, equal up to float rounding:

- in place (``points_per_pass=1``): each point is written into the model's own parameter
  tensors — no model copy — and the model is called as usual;
- batched (``points_per_pass=K>1``): K points per forward pass through
  ``torch.func.functional_call`` + ``vmap``, which pays for small models whose forward pass is
  too short to keep the device busy. :func:`choose_points_per_pass` picks K by timing.

Every point is evaluated in eval mode without gradients on fixed batches. BatchNorm statistics
at a point are the model's own, moved along the directions that move them (an interpolation
between two checkpoints does: x = 1 carries the other checkpoint's); with ``bn_inputs`` they are
instead re-estimated at every point. Afterwards — also
after an exception or Ctrl-C — the model's parameters, buffers, modes and BatchNorm momenta
are bit-identical to what they were.

Under ``torchrun`` (:func:`compute_landscapes`, ``sharded`` :func:`evaluate_surface`) the
missing cells are split across the ranks block by block and the values gathered to every rank
after each round; rank 0 settles the directions and the points per pass (a timing) and alone
locks and writes the file. The cells are computed exactly as alone, so the surface is the same.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed
from ..distributed import main_rank_lock, on_every_rank, on_main_rank
from ..errors import UserError
from ..landscape_types import LandscapeSpec, Surface, parse_directions
from ..progress import ProgressFn, report
from ..store.landscape import LandscapeFile, StoredSurface, group_names, read_landscape, write_landscape
from .directions import Direction, directions_from_source, moving_buffers, split_flat, stack

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class PointMover:
    """Places a model at θ + Σ_k c_k·d_k, and the buffers the directions move (BatchNorm running
    statistics along an interpolation) at β + Σ_k c_k·b_k; the other buffers stay as they are.
    A running variance that this would make negative (extrapolating past a checkpoint) is 0.

    A context manager: on entry it saves θ, every buffer, every module's train flag and BatchNorm
    momentum, and switches to eval mode; on exit it writes them all back exactly."""

    def __init__(self, model: nn.Module, directions: Sequence[Direction]):
        self.model = model
        buffers = moving_buffers(model)
        moved = list(dict.fromkeys(n for d in directions for n in d.buffers))
        names = [n for n, _ in model.named_parameters()]
        if any(d.names != names for d in directions) or not set(moved) <= set(buffers):
            raise UserError("the directions do not fit the model's parameters; they were made for another architecture.")
        #: (name, tensor) of every parameter, then of every buffer that moves.
        self.tensors = list(model.named_parameters()) + [(n, buffers[n]) for n in moved]
        self.directions = [[t.to(p.device, p.dtype) for t, (_, p) in zip(d.tensors, self.tensors)]
                           + [d.buffers[n].to(b.device, b.dtype) if n in d.buffers else torch.zeros_like(b)
                              for n, b in self.tensors[len(names):]] for d in directions]
        variances = {id(m.running_var) for m in model.modules()
                     if isinstance(m, _BatchNorm) and m.running_var is not None}
        #: The moving running variances, by name and as tensors (kept ≥ 0).
        self.variances = {n: b for n, b in self.tensors[len(names):] if id(b) in variances}

    def __enter__(self) -> "PointMover":
        self.origin = [p.detach().clone() for _, p in self.tensors]
        self.buffers = [(b, b.clone()) for b in self.model.buffers()]
        self.modes = [(m, m.training, getattr(m, "momentum", None)) for m in self.model.modules()]
        self.model.eval()
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for (_, p), theta in zip(self.tensors, self.origin):
                p.copy_(theta)
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        for module, training, momentum in self.modes:
            module.training = training
            if isinstance(module, _BatchNorm):
                module.momentum = momentum

    def stacked(self, coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters (and moving buffers) at K points, name -> (K, *shape); ``coords`` is (K, dim)
        on the device."""
        stacked = {}
        for i, ((name, _), theta) in enumerate(zip(self.tensors, self.origin)):
            value = theta.unsqueeze(0)
            for k, direction in enumerate(self.directions):
                value = value + coords[:, k].view(-1, *(1,) * theta.dim()) * direction[i]
            stacked[name] = value.clamp_min(0.0) if name in self.variances else value
        return stacked

    def move_to(self, coords: Sequence[float]) -> None:
        """Write the point ``coords`` (dim numbers) into the model's own parameters (and moving
        buffers), in place (multi-tensor kernels: a few launches whatever the number of tensors)."""
        params = [p for _, p in self.tensors]
        torch._foreach_copy_(params, self.origin)
        for c, direction in zip(coords, self.directions):
            torch._foreach_add_(params, direction, alpha=float(c))
        if self.variances:
            torch._foreach_clamp_min_(list(self.variances.values()), 0.0)

    def batched_forward(self) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        """(:meth:`stacked` K points, x (B, ...)) -> logits (K, B, C); buffers that do not move
        are used as they are."""
        moved = {n for n, _ in self.tensors}
        fixed = {n: b for n, b in self.model.named_buffers() if n not in moved}
        return vmap(lambda points, x: functional_call(self.model, (points, fixed), (x,)), in_dims=(0, None))


def recompute_bn_statistics(model: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics at the current parameters: reset, then a
    cumulative average over ``inputs`` with only the BatchNorm layers in train mode."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in inputs:
        model(x)
    for m in norms:
        m.eval()


def _mean_loss_and_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], batches: Batches, points: int,
                            rows_per_reduction: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy (each (points,), float64, on the device) of ``forward``'s
    (points, B, C) logits over all samples of ``batches``; nothing waits for the device.

    Logits of consecutive batches are reduced together, up to ``rows_per_reduction`` rows at a
    time: for small models the loss bookkeeping would otherwise cost as many kernel launches as
    the forward pass."""
    device = batches[0][1].device
    loss_sum = torch.zeros(points, dtype=torch.float64, device=device)
    correct = torch.zeros(points, dtype=torch.int64, device=device)
    held: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reduce() -> None:
        logits = torch.cat([lg for lg, _ in held], dim=1)
        y = torch.cat([y for _, y in held])
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(points) if points > 1 else y, reduction="none")
        loss_sum.add_(ce.view(points, -1).sum(1, dtype=torch.float64))
        correct.add_((logits.argmax(-1) == y).sum(1))
        held.clear()

    for x, y in batches:
        held.append((forward(x), y))
        if points * sum(len(y) for _, y in held) >= rows_per_reduction:
            reduce()
    if held:
        reduce()
    count = sum(len(y) for _, y in batches)
    return loss_sum / count, correct.double() / count


def _seconds_per_point(run: Callable[[], object], points_per_run: int, runs: int, device: torch.device) -> float:
    """Wall seconds per grid point of ``runs`` back-to-back calls of ``run`` (after a warm-up),
    the device synchronised only around them, as in a real pass over the grid."""
    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    run()
    synchronise()
    start = time.perf_counter()
    for _ in range(runs):
        run()
    synchronise()
    return (time.perf_counter() - start) / (runs * points_per_run)


def choose_points_per_pass(model: nn.Module, directions: Sequence[Direction], x: torch.Tensor,
                           candidates: Sequence[int] = (1, 4, 16), long_forward_s: float = 0.05) -> int:
    """The number of grid points per forward pass that evaluates fastest, timed on the batch ``x``
    over the same number of points for every candidate (parameter updates included).

    A forward pass longer than ``long_forward_s`` already keeps the device busy, so 1 is
    returned without trying more; a model that ``vmap`` cannot batch (or a K that does not fit
    in memory) ends the search. Timing only: the model is left exactly as it was."""
    device, points, origin = x.device, max(candidates), (0.0,) * len(directions)
    with torch.no_grad(), PointMover(model, directions) as mover:
        in_place = (lambda: (mover.move_to(origin), model(x)))
        if _seconds_per_point(in_place, 1, 1, device) > long_forward_s:
            return 1
        seconds = {1: _seconds_per_point(in_place, 1, points, device)}
        forward = mover.batched_forward()
        for k in (c for c in candidates if c > 1):
            zeros = torch.zeros(k, len(directions), device=device, dtype=x.dtype)
            try:
                seconds[k] = _seconds_per_point(lambda: forward(mover.stacked(zeros), x), k, max(1, points // k), device)
            except (RuntimeError, NotImplementedError):
                break
    return min(seconds, key=seconds.__getitem__)


def evaluate_surface(model: nn.Module, directions: Sequence[Direction], surface: Surface, batches: Batches, *,
                     points_per_pass: int = 1, bn_inputs: Optional[Sequence[torch.Tensor]] = None,
                     progress: Optional[ProgressFn] = None, task: str = "landscape",
                     on_block: Optional[Callable[[Surface], None]] = None, sync_every_s: float = 0.5,
                     sharded: bool = False) -> int:
    """Compute the cells of ``surface`` that are not done; returns how many were computed.

    Cells go in fixed blocks of ``points_per_pass`` consecutive flat indices, so a resumed run
    evaluates the same blocks as an uninterrupted one and gets the same numbers. A block's
    missing cells are evaluated together (batched when ``points_per_pass`` > 1). Results stay on
    the device, so it never idles waiting for the host, and are recorded in ``surface`` after
    the first block that ends ``sync_every_s`` seconds after the last recording (0: every
    block) and at the end; then ``progress`` gets the number of cells done and
    ``on_block(surface)`` is called. ``bn_inputs``: training inputs to re-estimate BatchNorm
    statistics from at every point (in-place path only).

    ``sharded`` (under ``torchrun``; every rank passes the same arguments): the blocks with
    missing cells are dealt out in rounds, block i of a round to rank i, and after every round
    the values of all ranks are gathered and recorded on every rank (``on_block`` then runs on
    every rank, together). A block's values do not depend on which rank evaluates it or on the
    blocks before it, so the surface is the one a single process computes."""
    if len(directions) != surface.grid.dim:
        raise UserError(f"a {surface.grid.dim}-D surface needs {surface.grid.dim} directions, got {len(directions)}.")
    if bn_inputs and points_per_pass > 1:
        raise UserError("re-estimating BatchNorm statistics at each point needs points_per_pass=1.")
    if not batches:
        raise UserError("no samples to evaluate the landscape on.")
    first = next(model.parameters())
    group = distributed.current() if sharded else distributed.Group()
    done = surface.done.reshape(-1)
    size, step = surface.grid.size, points_per_pass
    blocks = [b[~done[b]] for b in (np.arange(start, min(start + step, size)) for start in range(0, size, step))]
    blocks = [b for b in blocks if len(b)]
    mine = blocks[group.rank::group.world_size]
    pending: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
    last_record = time.monotonic()

    def gathered() -> tuple[np.ndarray, ...]:
        """(cells, loss, acc) of the pending blocks of every rank, on the host (a rank with none
        adds nothing); afterwards no block is pending."""
        own = (np.concatenate([c for c, _, _ in pending]) if pending else np.zeros(0, np.int64),
               *(torch.cat([r[i] for r in pending]).cpu().numpy() if pending else np.zeros(0) for i in (1, 2)))
        pending.clear()
        if not group.distributed:
            return own
        return tuple(np.concatenate(parts) for parts in zip(*distributed.all_gather_objects(own)))

    def record() -> None:
        cells, loss, acc = gathered()
        surface.record(cells, loss, acc)
        report(progress, task, int(done.sum()), surface.grid.size, loss=float(loss[-1]), acc=float(acc[-1]))
        if on_block is not None:
            on_block(surface)

    with torch.no_grad(), PointMover(model, directions) as mover:
        forward = mover.batched_forward()

        def evaluate(coords: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            if points_per_pass > 1:
                stacked = mover.stacked(torch.as_tensor(coords, dtype=first.dtype, device=first.device))
                return _mean_loss_and_accuracy(lambda x: forward(stacked, x), batches, len(coords))
            mover.move_to(coords[0])
            if bn_inputs:
                recompute_bn_statistics(model, bn_inputs)
            return _mean_loss_and_accuracy(lambda x: model(x).unsqueeze(0), batches, 1)

        for round_ in range(-(-len(blocks) // group.world_size)):
            if round_ < len(mine):
                pending.append((mine[round_], *evaluate(surface.grid.points(mine[round_]))))
            if group.distributed or time.monotonic() - last_record >= sync_every_s:
                record()
                last_record = time.monotonic()
        if pending:
            record()
    return sum(len(b) for b in blocks)


# ---- several checkpoints, one file, resumable ----------------------------------------------


@dataclass
class LandscapeInputs:
    """One checkpoint's model (on its device), fixed batches of (x, y), for ``bn=recompute`` the
    training inputs to re-estimate BatchNorm statistics from, and how to load the target of
    ``interpolate:CKPT`` (:func:`~alignsam_diag.analysis.directions.checkpoint_loader`; None:
    with the model spec stored in CKPT)."""

    model: nn.Module
    batches: Batches
    bn_inputs: Optional[list[torch.Tensor]] = None
    load_target: Optional[Callable[[str], nn.Module]] = None
    optimizer: Optional[str] = None  # the name the checkpoint records, stored with its surface


@dataclass
class LandscapeResult:
    """One checkpoint's surface; ``cells_computed``: cells this call evaluated (0 if the file
    already held them all)."""

    name: str
    checkpoint: str
    surface: Surface
    cells_computed: int


def parameter_sha256(model: nn.Module) -> str:
    """Fingerprint of θ, to refuse resuming a file against a changed checkpoint."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Saver:
    """Rewrites the file atomically at most every ``every_s`` seconds; the interval grows to 20×
    the last write's duration, so writing large direction sets stays under ~5 % of the run."""

    def __init__(self, path: Path, landscape: LandscapeFile, every_s: float):
        self.path, self.landscape, self.every_s = path, landscape, every_s
        self.interval, self.last = every_s, time.monotonic()

    def maybe_save(self) -> None:
        if time.monotonic() - self.last >= self.interval:
            self.save()

    def save_if_started(self) -> None:
        """Save unless no checkpoint got as far as its directions (nothing worth a file)."""
        if any(g.directions is not None for g in self.landscape.groups):
            self.save()

    def save(self) -> None:
        start = time.monotonic()
        write_landscape(self.path, self.landscape)
        self.last = time.monotonic()
        self.interval = max(self.every_s, 20 * (self.last - start))


def _open_or_create(path: Path, spec: LandscapeSpec, checkpoints: Sequence[str]) -> LandscapeFile:
    names, wanted = group_names(checkpoints), spec.to_dict()
    if not path.exists():
        grid = spec.make_grid()
        return LandscapeFile(wanted, [StoredSurface(n, str(c), Surface.empty(grid)) for n, c in zip(names, checkpoints)])
    stored = read_landscape(path)
    differ = [f"{k} {stored.spec.get(k)!r} (now {wanted.get(k)!r})"
              for k in sorted(set(wanted) | set(stored.spec)) if stored.spec.get(k) != wanted.get(k)]
    if differ:
        raise UserError(f"{path} was started with other options: {'; '.join(differ)}. Rerun with the same "
                        "options to resume it, or choose another --out.")
    if [g.name for g in stored.groups] != names:
        raise UserError(f"{path} holds the surfaces of {', '.join(g.name for g in stored.groups)}; to resume it, "
                        "pass the same checkpoints in the same order, or choose another --out.")
    return stored


#: A group's settled directions: parameter names, (dim, P) float32 rows, θ's fingerprint, points per pass.
DirectionsRecord = tuple[list[str], np.ndarray, str, int]


def _settle_directions(stored: StoredSurface, inputs: LandscapeInputs, spec: LandscapeSpec,
                       points_per_pass: Optional[int], path: Path) -> DirectionsRecord:
    """The group's stored directions, checked against the model, or on first use new ones (with
    θ's fingerprint and the points per pass, which a resumed run keeps); run by rank 0."""
    model, checksum = inputs.model, parameter_sha256(inputs.model)
    if stored.directions is not None:
        if stored.params_sha256 != checksum:
            raise UserError(f"{stored.checkpoint} has changed since {path} was started; choose another --out.")
        buffers = moving_buffers(model)
        if parse_directions(spec.directions)[0] == "interpolate" and buffers and buffers.keys().isdisjoint(stored.direction_names):
            raise UserError(f"{path} was started by an earlier version, which kept {stored.checkpoint}'s BatchNorm "
                            "statistics along the whole interpolation; choose another --out.")
        return stored.direction_names, stored.directions, stored.params_sha256, stored.points_per_pass
    directions = directions_from_source(model, spec.directions, spec.dim, spec.seed, spec.norm, spec.ignore_biasbn,
                                        checkpoint=stored.checkpoint, group=stored.name, load_target=inputs.load_target)
    names, rows = stack(directions)
    chosen = 1 if inputs.bn_inputs else (
        points_per_pass or choose_points_per_pass(model, directions, inputs.batches[0][0]))
    return names, rows, checksum, chosen


def _directions_for(stored: StoredSurface, inputs: LandscapeInputs, spec: LandscapeSpec,
                    points_per_pass: Optional[int], path: Path) -> list[Direction]:
    """The group's directions, the same on every rank: settled by rank 0 (from the file or made
    anew, :func:`_settle_directions`), recorded in ``stored`` on every rank, and read back from
    the stored rows (float32, as made: the round trip is exact)."""
    settled = on_main_rank(lambda: _settle_directions(stored, inputs, spec, points_per_pass, path))
    stored.direction_names, stored.directions, stored.params_sha256, stored.points_per_pass = settled
    return [split_flat(inputs.model, stored.direction_names, row, f"{path}: {stored.name}")
            for row in stored.directions]


def compute_landscapes(path: str | os.PathLike, spec: LandscapeSpec, checkpoints: Sequence[str],
                       load: Callable[[str], LandscapeInputs], *, points_per_pass: Optional[int] = None,
                       progress: Optional[ProgressFn] = None, save_every_s: float = 30.0) -> list[LandscapeResult]:
    """The surfaces of ``checkpoints`` with one spec, stored in (and resumed from) ``path``.

    ``load(checkpoint)`` gives the model and batches; it is called only for checkpoints whose
    surface is unfinished. Random directions come from the same seed for every checkpoint, so
    their panels are comparable. ``points_per_pass`` None = :func:`choose_points_per_pass`.
    The file is rewritten after at most ``save_every_s`` seconds of work (0: after every block)
    and when the job ends, fails or is interrupted (Ctrl-C); nothing is written if no checkpoint
    got as far as its directions. The file is locked for the whole job (a second writer is refused;
    see :func:`alignsam_diag.files.output_lock`).

    Under ``torchrun`` every rank calls this with the same arguments: rank 0 alone locks, reads
    and writes ``path``, settles the directions and the points per pass and hands them to the
    others; the missing cells are split over the ranks (``sharded``
    :func:`evaluate_surface`) and gathered to every rank, and rank 0 saves them as above."""
    with distributed.collectives("computing the landscape"):
        on_every_rank(spec.validate)
        path = Path(path)
        with main_rank_lock(path):
            return _compute_landscapes(path, spec, checkpoints, load, points_per_pass, progress, save_every_s)


def _compute_landscapes(path: Path, spec: LandscapeSpec, checkpoints: Sequence[str],
                        load: Callable[[str], LandscapeInputs], points_per_pass: Optional[int],
                        progress: Optional[ProgressFn], save_every_s: float) -> list[LandscapeResult]:
    """:func:`compute_landscapes` once ``path`` is locked."""
    landscape = on_main_rank(lambda: _open_or_create(path, spec, [str(c) for c in checkpoints]))
    saver = _Saver(path, landscape, save_every_s)  # used on rank 0 only
    results = []
    try:
        for stored in landscape.groups:
            computed = 0
            if not stored.surface.done.all():
                inputs = on_every_rank(functools.partial(load, stored.checkpoint))
                stored.optimizer = inputs.optimizer
                directions = _directions_for(stored, inputs, spec, points_per_pass, path)
                on_main_rank(saver.save)
                computed = evaluate_surface(inputs.model, directions, stored.surface, inputs.batches,
                                            points_per_pass=stored.points_per_pass, bn_inputs=inputs.bn_inputs,
                                            progress=progress, task=f"landscape {stored.name}",
                                            on_block=lambda _: on_main_rank(saver.maybe_save),
                                            sync_every_s=min(0.5, save_every_s), sharded=True)
            results.append(LandscapeResult(stored.name, stored.checkpoint, stored.surface, computed))
    finally:
        if distributed.current().is_main:
            saver.save_if_started()
    return results
