"""Gradient alignment around one optimizer step: cosine_b, cosine_a and change (appendix A.3 of
the paper, DESIGN §4, Figure 1).

For a model state θ_l, a train batch B^t, an auxiliary batch B^a and a radius ρ::

    g_t = ∇L_{B^t}(θ_l)    g_a = ∇L_{B^a}(θ_l)    θ̃^a_l = θ_l + ρ g_a/‖g_a‖
    cosine_b = cos(g_t, ∇L_{B^a}(θ̃^a_l))

then the optimizer takes its step θ_l → θ_{l+1} (any variant: on B^t, and on B^a for Align-SAM),
and with the same two batches at θ_{l+1}::

    g'_a = ∇L_{B^a}(θ_{l+1})    θ̃^a_{l+1} = θ_{l+1} + ρ g'_a/‖g'_a‖
    cosine_a = cos(∇L_{B^t}(θ_{l+1}), ∇L_{B^a}(θ̃^a_{l+1}))    change = (cosine_a − cosine_b)/cosine_a

The ascent ρ g/‖g‖ is taken in the stepping optimizer's own ball (its ``geometry``): Euclidean,
as written above, for every variant but ASAM and Align-ASAM, whose ρ is a radius of ASAM's
normalised ball (ρ T²g/‖Tg‖, the perturbation Align-ASAM itself uses for B^a). ρ defaults to the
optimizer's ``rho`` (Align-SAM's default 0.05 for SGD).

:func:`measure_step` takes the real step, ``optimizer.step(closure)``, and measures around it.
g_t is the gradient of the step's own first pass; Align-SAM and Align-ASAM (with ρ their ρ_a)
also make the two auxiliary passes of cosine_b themselves. Extra forward+backward passes per
measurement: 3 for Align-SAM/Align-ASAM (B^t, B^a and B^a perturbed, at θ_{l+1}); 5 for every
other variant (two more on B^a at θ_l, before the step) — with |B^a| = |B^t|/4 that is the work of
1.5 and 2 train-batch passes. Every extra pass runs like the step's own (train mode, the
closure's autocast) inside a forked RNG, with the BatchNorm buffers restored after it and the
parameters copied back exactly; ``.grad`` is put back to what the step left. So the model, its
BatchNorm buffers, ``.grad``, the optimizer state and the global RNG afterwards are bit for bit
what the plain step leaves. :func:`measure` is the post-hoc form: it works on copies of the
model and the optimizer, which stay untouched.

The rest serves ``alignsam-diag cosine``: the checkpoints of a run (:func:`checkpoint_files`),
the stepping optimizer rebuilt from a checkpoint (:func:`step_optimizer`), seeded batch pairs
(:func:`draw_pair`), and one checkpoint's record averaged over pairs (:func:`analyse_checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed, optim
from ..data import ArrayDataset
from ..data.augment import pad_crop_flip
from ..distributed import main_rank_lock, on_every_rank, on_main_rank
from ..errors import OptionError, UserError
from ..models.checkpoint import LoadedCheckpoint
from ..optim import OPTIMIZERS
from ..optim.align import AlignSAM
from ..optim.base import Closure
from ..optim.batchnorm import BatchNormGuard
from ..optim.geometry import Euclidean
from ..optim.vectors import Vector, add_, clone, copy_
from ..progress import ProgressFn, report
from ..store.alignment import QUANTITIES, CosineRecord, read_records, write_record
from .curvature import Batch

#: ρ of the measurement for a variant without one (SGD): Align-SAM's default.
DEFAULT_RHO = float(OPTIMIZERS.get("align-sam").param("rho").default)
#: The step measured for a checkpoint that records no optimizer: SAM with train's default settings.
UNRECORDED_STEP = {"name": "sam", "hyper": {},
                   "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}}
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def default_aux_batch_size(batch_size: int) -> int:
    """|B^a| when none is given: |B^t|/4, the paper's setting (at least 1)."""
    return max(1, batch_size // 4)


@dataclass(frozen=True)
class Alignment:
    """One measurement (see the module docstring); the fields are :data:`QUANTITIES` (cosines,
    change, norms and dot products before (``_b``, θ_l) and after (``_a``, θ_{l+1}) the step)
    and ``passes``, the extra forward+backward passes it made. change is NaN when cosine_a is 0."""

    cosine_b: float
    cosine_a: float
    change: float
    train_norm_b: float
    aux_norm_b: float
    dot_b: float
    train_norm_a: float
    aux_norm_a: float
    dot_a: float
    passes: int

    def values(self) -> list[float]:
        """The quantities in :data:`QUANTITIES` order."""
        return [getattr(self, name) for name in QUANTITIES]


def change(cosine_b: float, cosine_a: float) -> float:
    """(cosine_a − cosine_b)/cosine_a, the paper's relative improvement; NaN when cosine_a is 0."""
    return (cosine_a - cosine_b) / cosine_a if cosine_a != 0 else math.nan


def _pair(u: Vector, v: Vector) -> tuple[float, float, float, float]:
    """(cos, ‖u‖, ‖v‖, u·v), accumulated in float64."""
    dot = float(sum(torch.sum(a.double() * b.double()) for a, b in zip(u, v)))
    nu = math.sqrt(float(sum(torch.sum(a.double() ** 2) for a in u)))
    nv = math.sqrt(float(sum(torch.sum(b.double() ** 2) for b in v)))
    return (dot / (nu * nv) if nu * nv > 0 else math.nan), nu, nv, dot


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def measurement_rho(optimizer: torch.optim.Optimizer, rho: Optional[float] = None) -> float:
    """ρ of the measurement: ``rho``, else the optimizer's own, else :data:`DEFAULT_RHO`."""
    return float(rho if rho is not None else getattr(optimizer, "hyper", {}).get("rho", DEFAULT_RHO))


def reuses_step_passes(optimizer: torch.optim.Optimizer, rho: float) -> bool:
    """Whether the step itself makes cosine_b's two passes on B^a (Align-SAM and Align-ASAM, with
    ρ their auxiliary radius): at θ, then at θ + ascent(g_a, ρ) in the optimizer's ball."""
    return isinstance(optimizer, AlignSAM) and optimizer.rho_aux == rho


@contextlib.contextmanager
def own_rng(params: list[torch.Tensor]) -> Iterator[None]:
    """The global CPU (and used CUDA devices') RNG state as it was, after the block."""
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        yield


class _Passes:
    """Measurement passes: the gradient of ``closure(which)`` at θ or θ + offset, leaving the
    parameters, BatchNorm buffers and global RNG as they were; counts the passes."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure, rho: float) -> None:
        self.params, self.closure, self.rho, self.count = _params(optimizer), closure, rho, 0
        self.guard = BatchNormGuard(model)
        self.geometry = getattr(optimizer, "geometry", Euclidean())

    def gradient(self, which: str, offset: Optional[Vector] = None) -> Vector:
        origin = clone(self.params) if offset is not None else None
        for p in self.params:
            p.grad = None
        with self.guard.kept(), own_rng(self.params):
            try:
                if offset is not None:
                    with torch.no_grad():
                        add_(self.params, offset)
                with torch.enable_grad():
                    self.closure(which)
            finally:
                if origin is not None:
                    with torch.no_grad():
                        copy_(self.params, origin)
        self.count += 1
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def perturbed_aux(self) -> Vector:
        """∇L_{B^a}(θ̃^a), θ̃^a = θ + ascent(∇L_{B^a}(θ), ρ): two passes."""
        return self.gradient("aux", self.geometry.ascent(self.gradient("aux"), self.params, self.rho))


def measure_step(model: nn.Module, optimizer: torch.optim.Optimizer, closure: Closure,
                 rho: Optional[float] = None) -> Alignment:
    """Take ``optimizer.step(closure)`` and return the alignment around it (module docstring).

    closure(which): the training loop's closure — computes the loss on the train batch
    (``"train"``) or on the auxiliary batch (``"aux"``, the same B^a at every call), calls
    ``backward()`` and returns the loss. rho: the radius of θ̃^a (:func:`measurement_rho`).
    Afterwards everything is as the plain step leaves it."""
    rho = measurement_rho(optimizer, rho)
    params = _params(optimizer)
    passes = _Passes(model, optimizer, closure, rho)
    reuse = reuses_step_passes(optimizer, rho)
    aux_before = None if reuse else passes.perturbed_aux()
    wanted = {("train", 1), ("aux", 2)} if reuse else {("train", 1)}
    seen: Counter[str] = Counter()
    recorded: dict[tuple[str, int], Vector] = {}

    def recording(which: str = "train") -> torch.Tensor:
        loss = closure(which)
        seen[which] += 1
        if (which, seen[which]) in wanted:
            recorded[which, seen[which]] = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                                            for p in params]
        return loss

    optimizer.step(recording)
    before = _pair(recorded.pop(("train", 1)), recorded.pop(("aux", 2)) if reuse else aux_before)
    del aux_before
    left = [p.grad for p in params]
    after = _pair(passes.gradient("train"), passes.perturbed_aux())
    for p, grad in zip(params, left):
        p.grad = grad
    return Alignment(before[0], after[0], change(before[0], after[0]), *before[1:], *after[1:], passes=passes.count)


def batch_closure(model: nn.Module, train: Batch, aux: Batch) -> Closure:
    """A closure for ``optimizer.step``: cross-entropy of ``model`` on ``train`` or ``aux``."""
    def closure(which: str = "train") -> torch.Tensor:
        x, y = train if which == "train" else aux
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def copy_optimizer(optimizer: optim.SharpnessAware, model: nn.Module) -> optim.SharpnessAware:
    """The same optimizer (variant, hyper-parameters, base, state) for ``model``, a copy of the
    model ``optimizer`` steps (its parameters in the same order); no tensor is shared."""
    twin = optim.create(optimizer.variant.name, model.parameters(), base=optimizer.base_name,
                        lr=optimizer.base.defaults["lr"], model=model, **optimizer.hyper)  # GSAM reads it
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin


def measure(model: nn.Module, optimizer: optim.SharpnessAware, train: Batch, aux: Batch,
            rho: Optional[float] = None, seed: int = 0) -> Alignment:
    """:func:`measure_step` for the step ``optimizer`` (built over ``model.parameters()``) would
    take from ``model`` on the batches ``train`` and ``aux``, in train mode, taken on copies with
    the global RNG seeded by ``seed`` (dropout masks) and restored afterwards: ``model``,
    ``optimizer`` and the RNG are left untouched, and the same arguments give the same numbers."""
    twin = copy.deepcopy(model).train()
    with own_rng(_params(optimizer)):
        torch.manual_seed(seed)
        return measure_step(twin, copy_optimizer(optimizer, twin), batch_closure(twin, train, aux),
                            measurement_rho(optimizer, rho))


# -- the `cosine` command's analysis ---------------------------------------------------------

@dataclass
class CosineOptions:
    """Settings of a post-hoc measurement. pairs: seeded (B^t, B^a) draws per checkpoint.
    optimizer, rho, lam, lr: override the step the checkpoint records (None: as recorded; a
    checkpoint without one takes :data:`UNRECORDED_STEP`). batch_size, aux_batch_size: |B^t|,
    |B^a| (None: the run's; |B^a| = |B^t|/4 when the run has none)."""

    pairs: int = 8
    seed: int = 0
    optimizer: Optional[str] = None
    rho: Optional[float] = None
    lam: Optional[float] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    aux_batch_size: Optional[int] = None

    def validate(self) -> None:
        """Raise a one-line :class:`UserError` for the first invalid option."""
        if self.optimizer is not None:
            OPTIMIZERS.get(self.optimizer)
        checks = [("pairs", self.pairs >= 1, "must be at least 1."),
                  ("batch_size", self.batch_size is None or self.batch_size >= 1, "must be at least 1."),
                  ("aux_batch_size", self.aux_batch_size is None or self.aux_batch_size >= 1, "must be at least 1."),
                  ("lr", self.lr is None or (math.isfinite(self.lr) and self.lr >= 0),
                   "must be a non-negative number.")]
        for option, ok, reason in checks:
            if not ok:
                raise OptionError(option, getattr(self, option), reason)


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The checkpoints a ``cosine`` argument names: a file is itself; a run folder gives its
    ``epoch_NNN.pt`` in epoch order, or its ``last.pt`` when that is the only checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    epochs = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := EPOCH_FILE.fullmatch(p.name)))
    if epochs:
        return [p for _, p in epochs]
    if (path / "last.pt").is_file():
        return [path / "last.pt"]
    raise UserError(f"{path}: a folder without checkpoints (epoch_NNN.pt or last.pt); give a run folder of "
                    "train or checkpoint files.")


def step_optimizer(loaded: LoadedCheckpoint, options: CosineOptions) -> optim.SharpnessAware:
    """The optimizer whose step is measured, over ``loaded.model``'s parameters: the variant, its
    hyper-parameters, base settings and state (momentum buffers, lr of the next step) that the
    checkpoint records, each overridable by ``options``. Another variant than the recorded one
    takes the recorded ``rho`` and base state, its other hyper-parameters at their defaults."""
    stored: Mapping[str, Any] = loaded.meta["optimizer"] if loaded.optimizer else UNRECORDED_STEP
    name = options.optimizer or str(stored["name"])
    same = name == stored["name"]
    taken = {h.name for h in OPTIMIZERS.get(name).hyper}
    hyper = {k: v for k, v in dict(stored.get("hyper") or {}).items() if same or (k == "rho" and k in taken)}
    hyper.update({k: v for k, v in (("rho", options.rho), ("lam", options.lam)) if v is not None})
    base = dict(stored.get("base") or UNRECORDED_STEP["base"])
    momentum = base.get("momentum", (base.get("betas") or [0.9])[0])
    optimizer = optim.create(name, loaded.model.parameters(), base=str(base.get("name", "sgd")), lr=float(base["lr"]),
                             momentum=float(momentum), weight_decay=float(base["weight_decay"]),
                             nesterov=bool(base.get("nesterov", False)), model=loaded.model, **hyper)
    state = _stored_state(loaded)
    if state is not None:
        try:
            optimizer.load_state_dict(state if same else {"state": {}, "param_groups": state["param_groups"],
                                                          "base": state["base"]})
        except (KeyError, ValueError, TypeError, RuntimeError):
            raise UserError("the optimizer state stored in the checkpoint does not fit its model; the file is "
                            "damaged or was altered.") from None
    if options.lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = options.lr
    return optimizer


def draw_pair(data: ArrayDataset, batch_size: int, aux_batch_size: int, seed: int, index: int,
              augment: bool = False) -> tuple[Batch, Batch]:
    """Draw ``index`` of the seeded (B^t, B^a) pairs: two independent random subsets of ``data`` of
    ``batch_size`` and ``aux_batch_size`` samples (at most all of them), augmented like training
    batches when ``augment``. The same (seed, index) gives the same pair on every device."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + index) % 2 ** 63)
    picks = [torch.randperm(len(data), generator=generator)[:size] for size in (batch_size, aux_batch_size)]
    batches = []
    for pick in picks:
        pick = pick.to(data.y.device)
        x = data.x[pick]
        batches.append((pad_crop_flip(x, generator) if augment else x, data.y[pick]))
    return batches[0], batches[1]


def measurement_settings(loaded: LoadedCheckpoint, optimizer: optim.SharpnessAware,
                         options: CosineOptions) -> dict[str, Any]:
    """How a checkpoint is measured (stored with its record, compared on reruns): the stepping
    ``optimizer`` (name, hyper-parameters, base, lr of its step, whether the checkpoint's state
    was loaded), ρ of θ̃^a, |B^t|, |B^a| (defaults: the run's), pairs and seed."""
    config = (loaded.record.config or {}) if loaded.record is not None else {}
    stored = loaded.meta["optimizer"] if loaded.optimizer else {}
    run_batch = config.get("batch_size")
    batch = options.batch_size or int(run_batch or 128)
    aux = options.aux_batch_size or stored.get("aux_batch_size") or default_aux_batch_size(int(run_batch or batch))
    return {"optimizer": optimizer.variant.name, "hyper": dict(optimizer.hyper), "base": optimizer.base_name,
            "lr": float(optimizer.param_groups[0]["lr"]), "state": _stored_state(loaded) is not None,
            "rho": measurement_rho(optimizer, options.rho), "batch_size": batch, "aux_batch_size": int(aux),
            "pairs": options.pairs, "seed": options.seed}


def analyse_checkpoint(checkpoint: str | os.PathLike, loaded: LoadedCheckpoint, data: ArrayDataset, augment: bool,
                       options: CosineOptions, out: Optional[str | os.PathLike] = None,
                       progress: Optional[ProgressFn] = None) -> CosineRecord:
    """The alignment of the step :func:`step_optimizer` takes from ``loaded`` (its model and
    optimizer untouched), for ``options.pairs`` seeded pairs drawn from ``data`` (the run's
    training samples). A record for the same checkpoint already in ``out`` with the same settings
    is returned as it is; with other settings it is a :class:`UserError`; a new one is written there.
    ``progress`` gets task ``"cosine"`` after each pair.

    Under several processes rank r measures its block of the pair indices (:meth:`Group.shard
    <alignsam_diag.distributed.Group.shard>`), each pair exactly as one process does (the same
    draw and seed), and every rank gets all the rows in index order; rank 0 alone locks, reads
    and writes ``out``."""
    options.validate()
    optimizer = step_optimizer(loaded, options)
    settings = measurement_settings(loaded, optimizer, options)
    with contextlib.nullcontext() if out is None else main_rank_lock(out):
        found = None if out is None else on_main_rank(_stored_record, out, str(checkpoint), what=f"reading {out}")
        if found is not None:
            if found.settings != settings:
                differ = sorted(k for k in {*found.settings, *settings} if found.settings.get(k) != settings.get(k))
                raise UserError(f"{out} already holds results for {checkpoint} measured with other settings "
                                f"({', '.join(differ)}); choose another --out or delete it.")
            return found
        started = time.perf_counter()
        mine = on_every_rank(_measure_pairs, loaded, optimizer, data, augment, options, settings,
                             Path(checkpoint).name, progress, what=f"measuring {checkpoint}")
        with distributed.collectives(f"gathering the pairs of {checkpoint}"):
            shares = distributed.all_gather_objects(mine)
        rows = [row for share in shares for row in share]
        passes = next(result.passes for share in shares for result in share)
        record = CosineRecord(str(checkpoint), settings, np.array([r.values() for r in rows], dtype=np.float64),
                              passes, time.perf_counter() - started, _number(loaded.meta.get("epoch")),
                              _number(loaded.meta.get("step")), loaded.optimizer)
        if out is not None:
            on_main_rank(write_record, out, record, what=f"writing {out}")
    return record


def _measure_pairs(loaded: LoadedCheckpoint, optimizer: optim.SharpnessAware, data: ArrayDataset, augment: bool,
                   options: CosineOptions, settings: Mapping[str, Any], name: str,
                   progress: Optional[ProgressFn]) -> list[Alignment]:
    """This rank's block of the ``options.pairs`` measurements (all of them alone), in index order."""
    indices = distributed.current().shard(options.pairs)
    results = []
    for done, index in enumerate(indices, 1):
        train, aux = draw_pair(data, settings["batch_size"], settings["aux_batch_size"], options.seed, index, augment)
        result = measure(loaded.model, optimizer, train, aux, settings["rho"], seed=options.seed + index)
        results.append(result)
        report(progress, "cosine", done, len(indices), checkpoint=name, cosine_b=result.cosine_b,
               cosine_a=result.cosine_a)
    return results


def _stored_record(out: str | os.PathLike, checkpoint: str) -> Optional[CosineRecord]:
    """The record of ``checkpoint`` in ``out`` (None: no file, or none for it)."""
    return read_records(out).get(checkpoint) if Path(out).exists() else None


def _stored_state(loaded: LoadedCheckpoint) -> Optional[dict[str, Any]]:
    """The optimizer state a checkpoint of ours records with its optimizer (None: none)."""
    return loaded.record.optimizer_state if loaded.record is not None and loaded.optimizer else None


def _number(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
