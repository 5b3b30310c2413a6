"""The Hessian of a model's loss as a matrix-free linear operator.

:class:`HessianOperator` maps flat vectors of length P (the parameters in its scope, in
``model.named_parameters()`` order) to Hessian-vector products. The algorithms in
:mod:`.lanczos`, :mod:`.trace` and :mod:`.density` see only this interface (``shape``,
``dtype``, ``device``, ``num_products``, ``matvec``, ``matmat``), never the model.

The operator is the Hessian of the data-set **mean** loss over ``batches``:
H = Σ_b (n_b / N) H_b, with n_b the size of batch b and N = Σ n_b, so an unequal last batch
gets its proper weight. Products use double backpropagation. For each batch the first-order
graph (loss → gradient, ``create_graph=True``) is built once per data pass and reused for every
vector of a block, so :meth:`matmat` applies K vectors with one forward and one first backward
per batch plus K second backwards. With ``keep_graph=True`` those graphs are built once for the
operator's lifetime, and a product costs one backward per batch (memory: the graphs of all
samples). :meth:`HessianOperator.plan_graphs` chooses between the two from a measurement: the
bytes of the tensors batch 0's graph saves (``torch.autograd.graph.saved_tensors_hooks``),
scaled to all samples, against a memory budget. On a CPU, looping the second backward over the
K vectors was faster than both ``is_grads_batched`` and ``vmap(jvp(grad))`` (forward-over-reverse),
so that is what is used.

The model runs in eval mode (BatchNorm uses its running statistics, dropout is off) for the
operator's lifetime; :meth:`close` (or leaving the ``with`` block) restores each module's
training flag. In eval mode BatchNorm is the affine map x·s + t with s = γ/√(var + ε) and
t = β − mean·s; for the operator's lifetime each BatchNorm layer computes it in that form, whose
second derivatives are a few products, instead of through ``native_batch_norm``'s double
backward (written for training mode and about a third of a product's time in a small CNN).
Batches are used in the given order, with no augmentation.

Under ``torchrun`` (``sharded=True``) every rank passes the same batches and keeps its
contiguous block of their samples (:meth:`~alignsam_diag.distributed.Group.shard`), cut into
batches of at most the largest given batch's size (:func:`shard_batches`); each batch keeps its
weight n_b / N with N the samples of all ranks, and every product is summed over the ranks
(``all_reduce_sum``), so each rank holds the same H v — the Hessian of the same mean loss, as
BatchNorm in eval mode makes every sample's loss independent of the others. The algorithms that
use the operator then run replicated, identically, on every rank.
"""

from __future__ import annotations

import fnmatch
import math
import os
import types
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .. import distributed
from ..errors import OptionError, UserError
from ..memory import Budget, budget_bytes, gib, require_memory
from ..progress import ProgressFn, report

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def _eval_batchnorm_as_affine(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm (any dimension) as x·s + t; equal to ``F.batch_norm`` with running stats."""
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = scale * self.weight
    shift = -self.running_mean * scale
    if self.bias is not None:
        shift = shift + self.bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.view(shape) + shift.view(shape)


def _patch_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Make every BatchNorm layer with running statistics compute its eval-mode affine form
    (an instance-level ``forward``; removed by deleting it). Returns the patched layers."""
    patched = [m for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
               and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_eval_batchnorm_as_affine, m)
    return patched


def select_parameters(model: nn.Module, patterns: str | Sequence[str] | None) -> dict[str, nn.Parameter]:
    """The trainable parameters whose names match any of the shell-style ``patterns``
    (``fnmatch``: ``layer3.*``, ``*.weight``), in ``named_parameters()`` order; all when None."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if patterns is None:
        chosen = trainable
    else:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        chosen = {name: p for name, p in trainable.items()
                  if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)}
    if not chosen:
        names = ", ".join(list(trainable)[:4])
        raise OptionError("params", patterns, f"no trainable parameter matches; names look like {names}, ...")
    return chosen


def shard_batches(batches: Sequence[Batch], group: distributed.Group) -> list[Batch]:
    """``group``'s rank's contiguous block of the samples of ``batches`` (the same on every rank),
    in order, cut into batches of at most the largest given batch's size; empty when the rank
    gets no sample. Alone: ``batches`` as they are."""
    if not group.distributed:
        return list(batches)
    size = max(len(y) for _, y in batches)
    mine, start, pieces = group.shard(sum(len(y) for _, y in batches)), 0, []
    for x, y in batches:
        low, high = max(mine.start - start, 0), min(mine.stop - start, len(y))
        if low < high:
            pieces.append((x[low:high], y[low:high]))
        start += len(y)
    if not pieces:
        return []
    x, y = (torch.cat(parts) for parts in zip(*pieces)) if len(pieces) > 1 else pieces[0]
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


@dataclass(frozen=True)
class GraphPlan:
    """How a :class:`HessianOperator` makes its products, and why.

    keep_graph: every batch's first-order graph is built once and kept ("kept-graph" mode: one
        backward per batch and product) rather than rebuilt for every product ("data-set" mode:
        a forward and two backwards per batch and product).
    estimate_bytes: what the kept graphs of all samples hold (measured on batch 0, scaled); of a
        sharded operator, the most that the ranks sharing one device's memory hold, over devices.
    budget_bytes: the memory allowed for them (sharded: the smallest budget of any rank).
    forced: the mode was asked for, not chosen.
    """

    keep_graph: bool
    estimate_bytes: int
    budget_bytes: int
    forced: bool = False

    @property
    def mode(self) -> str:
        return "kept-graph" if self.keep_graph else "data-set"

    def describe(self) -> str:
        """One line, e.g. "kept-graph mode (graphs estimated at 3.2 MiB of the 8.0 GiB budget)"."""
        size, budget = gib(self.estimate_bytes), gib(self.budget_bytes)
        if self.forced:
            return f"{self.mode} mode, as asked (kept graphs estimated at {size}; budget {budget})"
        if self.keep_graph:
            return f"{self.mode} mode (graphs estimated at {size} of the {budget} budget)"
        return (f"{self.mode} mode, graphs rebuilt for every product (kept graphs estimated at {size}, over the "
                f"{budget} budget)")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON and HDF5: mode, estimate_bytes, budget_bytes, forced."""
        return {"mode": self.mode, **{k: v for k, v in asdict(self).items() if k != "keep_graph"}}


class HessianOperator:
    """Hessian of the mean of ``loss_fn(model(x), y)`` over ``batches`` w.r.t. the parameters
    selected by ``params`` (name patterns, see :func:`select_parameters`).

    loss_fn: a mean-reduced criterion, e.g. ``nn.CrossEntropyLoss()``.
    batches: fixed (x, y) pairs on the model's device; their order never changes.
    keep_graph: build each batch's first-order graph once and keep it (fast, memory-hungry);
        with one batch this is the classic "single-batch mode". :meth:`plan_graphs` sets it
        from a memory measurement instead.
    progress: optional callback, told after every batch of a data pass (task ``"hvp"``).
    sharded: split the samples over the ranks of the ``torch.distributed`` job, every rank
        passing the same ``batches`` (see the module docstring); every product, the memory plan
        and the determinism check are then collectives, so all ranks must make them together.
        Alone (or False) the operator uses ``batches`` as they are.

    Vectors are flat tensors of length P = ``shape[0]`` in the model's dtype and device;
    ``matvec`` and ``matmat`` accept any float dtype and return the operator's dtype.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch],
                 params: str | Sequence[str] | None = None, *, keep_graph: bool = False,
                 progress: Optional[ProgressFn] = None, sharded: bool = False) -> None:
        if not batches:
            raise UserError("the Hessian needs at least one batch of samples.")
        self.model = model
        self.loss_fn = loss_fn
        #: The job's ranks the samples are split over (rank 0 of 1: not split).
        self.group = distributed.current() if sharded else distributed.Group()
        #: This rank's batches (all of them alone).
        self.batches = shard_batches(batches, self.group)
        self.keep_graph = keep_graph
        self.progress = progress
        selected = select_parameters(model, params)
        self.param_names = list(selected)
        self.params = list(selected.values())
        #: N, the samples of all ranks: batch b's loss is weighted by n_b / N.
        self.num_samples = sum(len(y) for _, y in batches)
        self.num_products = 0
        self._training_flags = {m: m.training for m in model.modules()}
        model.eval()
        self._patched = _patch_batchnorm(model)
        self._graphs: Optional[list[tuple[torch.Tensor, ...]]] = None

    # -- the linear-operator interface -------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        size = sum(p.numel() for p in self.params)
        return size, size

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (P,)."""
        return self.matmat(v.unsqueeze(0)).squeeze(0)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """H applied to each row of ``vectors`` (K, P), in one pass over the data; returns (K, P)."""
        if vectors.ndim != 2 or vectors.shape[1] != self.shape[0]:
            raise ValueError(f"expected vectors of shape (K, {self.shape[0]}), got {tuple(vectors.shape)}")
        pieces = [self._split(v.to(self.device, self.dtype)) for v in vectors]
        out = torch.zeros(vectors.shape[0], self.shape[0], dtype=self.dtype, device=self.device)
        for i in range(len(self.batches)):
            grads = self._graph(i)
            for row, piece in enumerate(pieces):
                out[row] += self._second_backward(grads, piece)
            report(self.progress, "hvp", i + 1, len(self.batches), log=False)
        self.num_products += vectors.shape[0]
        return self._sum_over_ranks(out)

    # -- choosing the mode --------------------------------------------------------------------
    def plan_graphs(self, budget: Budget = None, keep_graph: Optional[bool] = None) -> GraphPlan:
        """Measure what keeping every batch's first-order graph would hold and set
        :attr:`keep_graph`: as ``keep_graph`` forces, else whether the estimate fits in ``budget``
        (bytes, "8GiB", "50%" or None: see :func:`alignsam_diag.memory.budget_bytes`). Call it
        before the first product; batch 0's graph, built for the measurement, is kept if the
        mode keeps graphs. Sharded, every rank measures its own block and all take the most
        conservative choice: kept graphs only if the largest estimate fits in the smallest budget;
        on the CPU the ranks of one host share its memory, so a rank's estimate counts once per
        rank there (``LOCAL_WORLD_SIZE``).

        The estimate is the bytes of the tensors that batch 0's forward and first backward save
        for later backwards, each storage once, plus its gradient — the parameters, buffers and
        the batch itself exist anyway and are not counted — times N / n_0 (samples over batch
        0's samples). The saved-tensor hooks of the measurement leave that graph in a reference
        cycle that Python cannot collect, so a caller that builds operators over and over (the
        training-time tracker) plans once and passes ``keep_graph`` to the later ones."""
        allowed = budget_bytes(budget, self.device)
        grads, measured = self._measured_graph() if self.batches else ((), 0)
        samples = sum(len(y) for _, y in self.batches)
        own = math.ceil(measured * samples / len(self.batches[0][1])) if samples else 0
        estimate, failure = own * self._ranks_sharing_memory(), None
        if keep_graph:  # forced: refused, before it allocates, when it cannot fit at all
            try:
                require_memory(estimate, f"kept graphs of {samples:,} samples",
                               "drop --keep-graph (graphs are then rebuilt per product) or use fewer --samples",
                               self.device)
            except UserError as err:
                failure = err
        if self.group.distributed:
            distributed.agree(failure)
            measures = distributed.all_gather_objects((estimate, allowed))
            estimate, allowed = max(e for e, _ in measures), min(a for _, a in measures)
        elif failure is not None:
            raise failure
        self.keep_graph = estimate <= allowed if keep_graph is None else keep_graph
        self._graphs = [grads] if self.keep_graph and self.batches else None
        return GraphPlan(self.keep_graph, estimate, allowed, forced=keep_graph is not None)

    def _ranks_sharing_memory(self) -> int:
        """How many ranks keep their graphs in the memory this rank's go to: the ranks of this
        host on the CPU (sharded under torchrun), else 1."""
        if self.group.distributed and self.device.type == "cpu":
            return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return 1

    def _measured_graph(self) -> tuple[tuple[torch.Tensor, ...], int]:
        """Batch 0's gradient with its graph, and the bytes that graph holds (see :meth:`plan_graphs`)."""
        storages: dict[int, int] = {}  # data pointer -> bytes, so a storage saved twice counts once

        def note(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(note, lambda tensor: tensor):
            loss, grads = self._first_order(0)  # ``loss`` keeps the forward's saved tensors alive meanwhile
        for g in grads:
            note(g)
        for resident in (*self.model.parameters(), *self.model.buffers(), *self.batches[0]):
            storages.pop(resident.untyped_storage().data_ptr(), None)
        return grads, sum(storages.values())

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Drop kept graphs and restore every module's training flag."""
        self._graphs = None
        for module in self._patched:
            del module.forward
        self._patched = []
        for module, training in self._training_flags.items():
            module.train(training)

    def __enter__(self) -> "HessianOperator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ------------------------------------------------------------------------------
    def check_determinism(self, seed: int = 0, rtol: Optional[float] = None) -> None:
        """Run two independent data passes (loss, gradient and one product each, graphs built
        afresh) and raise :class:`UserError` if they differ by more than ``rtol`` relative to
        their size (default: 1e-4 in float32, 1e-10 in float64). Sharded, each pass is summed
        over the ranks, so every rank compares the same numbers and all raise or none."""
        rtol = rtol if rtol is not None else (1e-10 if self.dtype == torch.float64 else 1e-4)
        probe = torch.randn(self.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        piece = self._split(probe.to(self.device, self.dtype))
        first, second = ([self._sum_over_ranks(t) for t in self._fresh_pass(piece)] for _ in range(2))
        for what, a, b in zip(("loss", "gradient", "Hessian-vector product"), first, second):
            diff = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30)
            if diff > rtol:
                raise UserError(
                    f"two passes over the same samples gave different {what}s (relative difference "
                    f"{diff:.2e} > {rtol:.0e}): the model is not deterministic in eval mode (dropout "
                    "forced on, random augmentation or noise in forward?); the Hessian is undefined.")

    # -- internals ---------------------------------------------------------------------------
    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place) when sharded, else as it is."""
        return distributed.all_reduce_sum(tensor) if self.group.distributed else tensor

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat (P,) vector as views shaped like the parameters."""
        sizes = [p.numel() for p in self.params]
        return [chunk.view_as(p) for chunk, p in zip(flat.split(sizes), self.params)]

    def _first_order(self, index: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(weighted loss, its gradient with graph) of batch ``index``; the loss is scaled by
        n_b / N so that the sum over batches is the data-set mean."""
        x, y = self.batches[index]
        loss = self.loss_fn(self.model(x), y) * (len(y) / self.num_samples)
        return loss, torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)

    def _second_backward(self, grads: tuple[torch.Tensor, ...], piece: list[torch.Tensor]) -> torch.Tensor:
        """H_b·v (P,) from batch b's first-order graph ``grads``, which is kept for reuse.
        Gradient entries that do not depend on the parameters contribute zero."""
        pairs = [(g, v) for g, v in zip(grads, piece) if g.requires_grad]
        if not pairs:
            return torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        hv = torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                 retain_graph=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in hv])

    def _graph(self, index: int) -> tuple[torch.Tensor, ...]:
        if not self.keep_graph:
            return self._first_order(index)[1]
        if self._graphs is None:
            self._graphs = []
        while len(self._graphs) <= index:
            self._graphs.append(self._first_order(len(self._graphs))[1])
        return self._graphs[index]

    def _fresh_pass(self, piece: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (1,), gradient (P,) and H·piece (P,) from one data pass with new graphs."""
        loss_sum = torch.zeros(1, dtype=torch.float64, device=self.device)
        grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        hvp_sum = torch.zeros_like(grad_sum)
        for i in range(len(self.batches)):
            loss, grads = self._first_order(i)
            loss_sum += loss.detach().double()
            grad_sum += torch.cat([g.detach().reshape(-1) for g in grads])
            hvp_sum += self._second_backward(grads, piece)
        return loss_sum, grad_sum, hvp_sum
