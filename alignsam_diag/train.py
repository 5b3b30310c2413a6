"""The training loop.

It drives any optimizer from :mod:`alignsam_diag.optim` through ``step(closure)``: the
closure computes the loss on the batch it is asked for (``"train"`` or ``"aux"``) and calls
``backward()``; the optimizer decides how many passes to make. The loop never knows which
variant it runs.

A run folder has one writer at a time (:func:`alignsam_diag.files.output_lock`); a resumed run
takes every option from its ``last.pt`` (:func:`resume`), only the epoch count may grow.

Checkpoints are :class:`~alignsam_diag.models.checkpoint.Checkpoint` records (written by
:meth:`Run.save`, read back by :func:`resume`). They record the settings as resolved, defaults
written out (:meth:`TrainConfig.resolved` and the ``optimizer`` entry: every hyper-parameter of
the variant, |B^a|, the base optimizer's settings, the schedule with its warm-up), so a later
change of a default does not change what a stored run was or how it resumes. With ``track_*`` set,
the loop also logs gradient alignment and λ_max into ``history.h5``, changing nothing (:mod:`.analysis.tracking`).

Randomness is keyed by (seed, epoch): the epoch's sample order, the auxiliary-batch order and
the augmentation draws come from generators seeded from those two numbers, so a run resumed
from the checkpoint at the end of epoch e replays epoch e+1 exactly as an uninterrupted run.

Under ``torchrun --nproc_per_node W`` the same loop runs on every rank, as
:mod:`.train_distributed` describes: ``batch_size`` and ``aux_batch_size`` are global (each rank
takes its block of every global batch of the same seeded order, and |B^a|/W auxiliary samples
from its own stream), the model is wrapped in ``DistributedDataParallel``, the test set is
evaluated in blocks, and only rank 0 locks the folder and writes checkpoints and history. The
auxiliary order, the augmentation draws and (W > 1 only) the global torch RNG are keyed by rank
too; rank 0's keys are those of a single process. The checkpoint records the spread under
``optimizer.distributed`` (W > 1 only); a run may resume on another number of ranks.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, optim
from .analysis.alignment import default_aux_batch_size
from .analysis.tracking import Tracking
from .data import ArrayDataset, DataSpec, DataSplits, fixed_batches, load_data
from .data.augment import pad_crop_flip
from .distributed import Group
from .errors import DivergedError, OptionError, UserError
from .files import DiskFullError
from .models import ModelSpec, build_model
from .models.checkpoint import Checkpoint, NewerFormatError, check_stored_arch
from .models.probe import check_model_takes
from .progress import ProgressFn, report
from .store.history import COLUMNS, write_history
from .train_distributed import (DOING, check_world, main_rank_folder, rank_loss, record, reseed,
                                sync_buffers, wrap)


@dataclass
class TrainConfig:
    """A training run. ``hyper`` holds the optimizer variant's own hyper-parameters (rho, lam...;
    those left out take the variant's defaults); ``aux_batch_size`` None means |B^t|/4 (the
    paper's setting) for variants that need one. :meth:`resolved` writes the defaults out."""

    data: DataSpec = field(default_factory=DataSpec)
    arch: str = "cnn-small"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"
    base: str = "sgd"
    hyper: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    aux_batch_size: Optional[int] = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0  # at lr 0.1 without it, SGD and SAM start far above chance
    seed: int = 0
    amp: Optional[str] = None
    save_every: int = 0
    eval_batch_size: int = 1024
    track_cosine_every: int = 0  # log cosine_b, cosine_a, change every N steps (0: off)
    track_sharpness_every: int = 0  # log λ_max of the Hessian every N steps (0: off) ...
    track_samples: int = 1024  # ... on this many fixed training samples

    def validate(self) -> None:
        """Raise a :class:`UserError` naming the first invalid option."""
        checks = [
            ("epochs", self.epochs >= 1, "must be at least 1."),
            ("batch_size", self.batch_size >= 1, "must be at least 1."),
            ("aux_batch_size", self.aux_batch_size is None or self.aux_batch_size >= 1, "must be at least 1."),
            ("lr", self.lr > 0, "must be positive."),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)."),
            ("weight_decay", self.weight_decay >= 0, "must be non-negative."),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be non-negative."),
            ("save_every", self.save_every >= 0, "must be non-negative."),
            *((name, getattr(self, name) >= 0, "must be non-negative.")
              for name in ("track_cosine_every", "track_sharpness_every")),
            ("track_samples", self.track_samples >= 1, "must be at least 1."),
            ("amp", self.amp in (None, "bf16"), "only bf16 autocast is supported (fp16 would need a GradScaler, "
                                                "which cannot unscale the several passes of SAM-family steps); "
                                                "use {amp} bf16."),
        ]
        for option, ok, reason in checks:
            if not ok:
                raise OptionError(option, getattr(self, option), reason,
                                  mentions=("amp",) if option == "amp" else ())

    def resolved(self) -> "TrainConfig":
        """A copy with what the optimizer variant leaves to defaults written out, as checkpoints
        store it: ``hyper`` holds every hyper-parameter of the variant, the given ones checked
        against its description (:meth:`alignsam_diag.optim.Variant.resolve`), ``aux_batch_size``
        the |B^a| used for variants with an auxiliary batch (|B^t|/4 when not given) and None for
        the others. Resolving a resolved config changes nothing."""
        variant = optim.OPTIMIZERS.get(self.optimizer)
        if self.aux_batch_size is not None and not variant.needs_aux:
            needing = ", ".join(name for name in optim.OPTIMIZERS if optim.OPTIMIZERS.get(name).needs_aux)
            raise UserError(f"--aux-batch-size is only used by variants with an auxiliary batch "
                            f"({needing}), not {self.optimizer}.")
        aux = (self.aux_batch_size or default_aux_batch_size(self.batch_size)) if variant.needs_aux else None
        return replace(self, hyper=variant.resolve(self.hyper), aux_batch_size=aux)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (the data spec without its runtime-only ``download``)."""
        return {**asdict(self), "data": self.data.to_dict()}

    def option(self, name: str) -> Any:
        """A field by dotted name ("lr", "data.subset", "hyper.rho") in the stored form; None if unset."""
        value: Any = self.to_dict()
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        return value

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["data"] = DataSpec.from_dict(dict(d["data"]))
        return cls(**fields)


@dataclass
class TrainResult:
    """What a finished run returns. metrics: the last epoch's row of ``history``."""

    metrics: dict[str, float]
    history: dict[str, list[float]]
    run_dir: Path


def schedule_settings(config: TrainConfig, steps_per_epoch: int) -> dict[str, Any]:
    """The learning-rate schedule of ``config`` in steps, as checkpoints store it and
    :func:`cosine_schedule` follows it: linear warm-up over ``warmup_steps``, then cosine decay
    from ``peak_lr`` to ``final_lr`` (0) at ``total_steps``. The warm-up takes at most half the
    run, so a short run (the one-epoch default warm-up in a one-epoch run) still decays."""
    total = config.epochs * steps_per_epoch
    return {"name": "cosine", "peak_lr": config.lr, "final_lr": 0.0, "total_steps": total,
            "warmup": "linear", "warmup_epochs": config.warmup_epochs,
            "warmup_steps": min(round(config.warmup_epochs * steps_per_epoch), total // 2),
            "steps_per_epoch": steps_per_epoch}


#: Added once per rank to a stream's key (odd, so the W keys of a stream differ).
RANK_STRIDE = 0x9E3779B97F4A7C15
#: Mixed into the key of the global torch RNG's epoch seed (W > 1), apart from the streams.
GLOBAL_RNG = 0x2545F4914F6CDD1D


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """The seed of one (seed, epoch, stream) on ``rank``; streams: 0 order, 1 aux order,
    2 train augmentation, 3 aux augmentation. Rank 0's seeds are a single process's."""
    return (((seed * 1_000_003 + epoch) * 4 + stream) + rank * RANK_STRIDE) % (2 ** 63)


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded with :func:`epoch_seed`."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream, rank))


def cosine_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class BatchStream:
    """The batches of one epoch on one rank of ``group``: its block of each global train batch
    of a seeded order (the same on every rank) and, on request, auxiliary batches of
    |B^a|/W samples drawn from its own seeded order, independent of the train batches."""

    def __init__(self, data: ArrayDataset, config: TrainConfig, epoch: int, augment: bool,
                 group: Group = Group()) -> None:
        self.data, self.augment, self.group = data, augment, group
        n, rank = len(data), group.rank
        self.order = torch.randperm(n, generator=epoch_generator(config.seed, epoch, 0)).to(data.y.device)
        self.batch_size = config.batch_size
        self.aux_size = (config.aux_batch_size or default_aux_batch_size(config.batch_size)) // group.world_size
        self.aux_gen = epoch_generator(config.seed, epoch, 1, rank)
        self.aux_order = torch.empty(0, dtype=torch.long)
        self.train_aug = epoch_generator(config.seed, epoch, 2, rank)
        self.aux_aug = epoch_generator(config.seed, epoch, 3, rank)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def _take(self, index: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.x[index]
        return (pad_crop_flip(x, gen) if self.augment else x), self.data.y[index]

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """This rank's block (x, y) of each global batch, with the global batch's size."""
        for start in range(0, len(self.data), self.batch_size):
            batch = self.order[start:start + self.batch_size]
            block = self.group.shard(len(batch))
            yield *self._take(batch[block.start:block.stop], self.train_aug), len(batch)

    def aux_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next |B^a| samples of a seeded permutation (a fresh one when it runs out)."""
        if len(self.aux_order) < self.aux_size:
            fresh = torch.randperm(len(self.data), generator=self.aux_gen)
            self.aux_order = torch.cat([self.aux_order, fresh])
        index, self.aux_order = self.aux_order[:self.aux_size], self.aux_order[self.aux_size:]
        return self._take(index.to(self.data.y.device), self.aux_aug)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int, amp: Optional[str] = None,
             group: Group = Group()) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (in [0, 1]) of ``model`` in eval mode on ``data``;
    with a distributed ``group``, each rank evaluates its block of ``data`` and the sums are
    all-reduced (every rank returns the same numbers)."""
    was_training = model.training
    model.eval()
    block = group.shard(len(data))
    part = ArrayDataset(*(t[block.start:block.stop] for t in (data.x, data.y, data.clean_y)))
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.y.device)
    correct = torch.zeros((), dtype=torch.long, device=data.y.device)
    for x, y in fixed_batches(part, batch_size):
        with _autocast(amp, x.device):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    if group.distributed:
        distributed.all_reduce_sum(loss_sum)
        distributed.all_reduce_sum(correct)
    return loss_sum.item() / len(data), correct.item() / len(data)


def _autocast(amp: Optional[str], device: torch.device) -> Any:
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


class Run:
    """One training run: model, optimizer, scheduler and history, checkpointed per epoch.
    ``config`` is the resolved copy (:meth:`TrainConfig.resolved`) of the one given. Under
    several ranks (:func:`distributed.current`) ``net`` is ``model`` in DistributedDataParallel
    (the train passes and the optimizer use it), else ``model`` itself."""

    def __init__(self, config: TrainConfig, run_dir: Path, device: torch.device,
                 data: Optional[DataSplits] = None) -> None:
        config.validate()
        config = config.resolved()
        device = distributed.local_device(device)  # under torchrun a bare cuda is this rank's GPU
        self.config, self.run_dir, self.device = config, Path(run_dir), device
        self.group = distributed.current()
        if data is None and config.data.download and self.group.distributed:  # one download, by rank 0
            distributed.on_main_rank(lambda: load_data(config.data, torch.device("cpu")) and None,
                                     what="downloading the data set")
        self.data = data or load_data(config.data, device)
        check_world(config.batch_size, config.aux_batch_size, len(self.data.train),
                    {"track_cosine_every": config.track_cosine_every,
                     "track_sharpness_every": config.track_sharpness_every}, self.group)
        torch.manual_seed(config.seed)
        self.spec = ModelSpec(config.arch, self.data.num_classes, self.data.in_channels,
                              self.data.image_size, dict(config.arch_kwargs))
        self.model = build_model(self.spec).to(device)
        check_model_takes(self.model, self.data.train.x, self.data.train.y, f"--arch {config.arch}",
                          "choose an --arch for such inputs (torchvision models: --arch-kwargs "
                          "'{\"small_input\": true}')")
        self.net = wrap(self.model, device, self.group)
        self.optimizer = optim.create(config.optimizer, self.model.parameters(), base=config.base,
                                      lr=config.lr, momentum=config.momentum,
                                      weight_decay=config.weight_decay, model=self.net,
                                      amp=config.amp, **config.hyper)
        self.schedule = schedule_settings(config, math.ceil(len(self.data.train) / config.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(self.schedule["total_steps"], self.schedule["warmup_steps"]))
        self.tracking = Tracking(self.model, self.optimizer, self.data.train, config.track_cosine_every,
                                 config.track_sharpness_every, config.track_samples, config.seed,
                                 config.eval_batch_size, self.schedule["steps_per_epoch"])
        self.epoch, self.step = 0, 0
        self.history: dict[str, list[float]] = {k: [] for k in COLUMNS}

    def checkpoint(self) -> Checkpoint:
        """The run as it stands, as its checkpoint files hold it."""
        return Checkpoint(
            state_dict=self.model.state_dict(), model=self.spec, data=self.config.data.to_dict(),
            optimizer=self.settings(), optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(), config=self.config.to_dict(),
            epoch=self.epoch, step=self.step, metrics={k: v[-1] for k, v in self.history.items() if v},
            history=self.history,
            rng={"torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []})

    def settings(self) -> dict[str, Any]:
        """What the run's optimizer does, defaults written out (a checkpoint's ``optimizer``): the
        variant's ``name`` and every hyper-parameter (``hyper``), ``aux_batch_size`` (|B^a|, None
        without an auxiliary batch), the ``base`` optimizer's settings
        (:meth:`~alignsam_diag.optim.SharpnessAware.base_settings`) and the LR ``schedule`` with
        its warm-up (:func:`schedule_settings`); under several ranks also ``distributed``, how
        the ranks that wrote the checkpoint split the global batches
        (:func:`~alignsam_diag.train_distributed.record`)."""
        spread = ({"distributed": record(self.config.batch_size, self.config.aux_batch_size, self.group)}
                  if self.group.distributed else {})
        return {"name": self.config.optimizer, "hyper": dict(self.config.hyper),
                "aux_batch_size": self.config.aux_batch_size, "base": self.optimizer.base_settings(),
                "schedule": dict(self.schedule), **spread}

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt``, a checkpoint written by this loop (a field it lacks raises
        TypeError)."""
        self.model.load_state_dict(ckpt.state_dict)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        self.epoch, self.step = int(ckpt.epoch), int(ckpt.step)
        self.history = {k: list(ckpt.history[k]) for k in COLUMNS}
        self.tracking.restore(self.run_dir / "history.h5", self.step)
        torch.set_rng_state(ckpt.rng["torch"])
        if self.device.type == "cuda" and ckpt.rng["cuda"]:
            torch.cuda.set_rng_state_all(ckpt.rng["cuda"])

    def train_epoch(self, progress: Optional[ProgressFn]) -> tuple[float, float]:
        """One epoch; returns the mean train loss and accuracy of the clean (unperturbed) passes
        (over all ranks: their sums are all-reduced)."""
        cfg, net, world = self.config, self.net, self.group.world_size
        net.train()
        stream = BatchStream(self.data.train, cfg, self.epoch, self.data.augment, self.group)
        reseed(epoch_seed(cfg.seed, self.epoch, 0, self.group.rank) ^ GLOBAL_RNG, self.group)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, start, last_report = 0, time.perf_counter(), 0.0
        for i, (x, y, total) in enumerate(stream.train_batches()):
            first: list[torch.Tensor] = []
            draw_aux = functools.cache(stream.aux_batch)  # one B^a per step, drawn on first use

            def closure(which: str = "train") -> torch.Tensor:
                bx, by = (x, y) if which == "train" else draw_aux()
                with _autocast(cfg.amp, bx.device):
                    out = net(bx)
                    loss = rank_loss(out.float(), by, total, world) if which == "train" else \
                        F.cross_entropy(out.float(), by)
                if which == "train" and not first:
                    first.append(loss.detach().double() * (total / world))  # this rank's sum of losses
                    first.append((out.argmax(1) == by).sum())
                loss.backward()
                return loss

            sync_buffers(self.model, self.group)
            self.tracking.step(self.step, closure, draw_aux)
            self.scheduler.step()
            self.step += 1
            loss_sum += first[0]
            correct += first[1]
            seen += len(y)
            now = time.perf_counter()
            if now - last_report > 0.25 or i + 1 == len(stream):
                last_report = now
                loss_value = loss_sum.item() / seen
                if not math.isfinite(loss_value) and not self.group.distributed:  # ranks: checked together below
                    raise self.diverged(loss_value)
                report(progress, "train", i + 1, len(stream), log=False, epoch=self.epoch + 1,
                       loss=loss_value, acc=correct.item() / seen, img_per_s=world * seen / (now - start))
        totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(seen)]))
        loss_value = totals[0].item() / totals[2].item()
        if not math.isfinite(loss_value):
            raise self.diverged(loss_value)
        return loss_value, totals[1].item() / totals[2].item()

    def diverged(self, loss: float) -> DivergedError:
        """The error for a loss that became ``loss`` (NaN/inf), saying whether a checkpoint is kept."""
        where = f"the training loss became {loss} in epoch {self.epoch + 1}, step {self.step}"
        if (self.run_dir / "last.pt").exists():
            return DivergedError(f"{where}; lower --lr (or --rho). The last good checkpoint is kept in "
                                 f"{self.run_dir}.")
        return DivergedError(f"{where}, before the first checkpoint, so nothing was saved; lower --lr (or --rho) "
                             "or add --warmup-epochs, and start the run again.")

    def run(self, progress: Optional[ProgressFn] = None) -> TrainResult:
        cfg = self.config
        with distributed.collectives(DOING):
            while self.epoch < cfg.epochs:
                start = time.perf_counter()
                train_loss, train_acc = self.train_epoch(progress)
                seconds = time.perf_counter() - start
                sync_buffers(self.model, self.group)  # rank 0's running statistics, as the checkpoint holds them
                test_loss, test_acc = evaluate(self.model, self.data.test, cfg.eval_batch_size, cfg.amp, self.group)
                self.epoch += 1
                row = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": train_acc,
                       "test_loss": test_loss, "test_acc": test_acc,
                       "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds}
                for k, v in row.items():
                    self.history[k].append(float(v))
                report(progress, "epoch", self.epoch, cfg.epochs, log=True,
                       **{k: v for k, v in row.items() if k != "epoch"}, **self.tracking.latest())
                distributed.on_main_rank(self.save, what=DOING)
        return TrainResult({k: v[-1] for k, v in self.history.items() if v}, self.history, self.run_dir)

    def save(self) -> None:
        """Write the epoch's checkpoints and history (rank 0's job: :meth:`run` calls it there
        only); a full disk says how to continue the run."""
        checkpoint = self.checkpoint()
        try:
            if self.config.save_every and self.epoch % self.config.save_every == 0:
                checkpoint.save(self.run_dir / f"epoch_{self.epoch:03d}.pt")
            checkpoint.save(self.run_dir / "last.pt")
            write_history(self.run_dir / "history.h5", self.history, self.config.to_dict(), self.tracking.logs())
        except DiskFullError as err:
            rerun = "rerun with --resume" if (self.run_dir / "last.pt").exists() else "rerun the same command"
            raise DiskFullError(err.path, err.reason, rerun) from None


class ResumeConflict(UserError):
    """Options asked for when resuming that differ from the stored run's. ``conflicts``:
    (option, asked-for value, stored value); ``label`` names an option in the message."""

    def __init__(self, run_dir: Path, conflicts: list[tuple[str, Any, Any]],
                 label: Callable[[str], str] = str) -> None:
        self.run_dir, self.conflicts = run_dir, conflicts
        listed = ", ".join(f"{label(name)} {_shown(given)} (stored: {_shown(stored)})"
                           for name, given, stored in conflicts)
        super().__init__(f"{run_dir} was started with other options: {listed}. Leave them out to resume the run "
                         "as stored (only --epochs may extend it), or start a new run with another --out.")

    def relabel(self, label: Callable[[str], str]) -> "ResumeConflict":
        """The same conflicts, each option named by ``label(option)`` (e.g. its command-line flag)."""
        return ResumeConflict(self.run_dir, self.conflicts, label)


def _shown(value: Any) -> str:
    if value is None:
        return "not set"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _damaged(last: Path) -> UserError:
    return UserError(f"{last}: not a checkpoint written by alignsam-diag train, or damaged; put back a good "
                     "copy (an epoch_NNN.pt of the run will do) or start a new run with another --out.")


def _read_run(last: Path) -> tuple[Checkpoint, TrainConfig]:
    """The checkpoint ``last`` of a run and its configuration, resolved (a run stored before
    checkpoints held resolved settings takes today's defaults). A file of a newer format says to
    upgrade; anything else but a readable checkpoint of this loop (a tampered file included) is
    one line saying so, never a hint to trust the file."""
    try:
        ckpt = Checkpoint.read(last)
        return ckpt, TrainConfig.from_dict(ckpt.config).resolved()
    except NewerFormatError:
        raise
    except (UserError, KeyError, TypeError, ValueError, AttributeError):
        raise _damaged(last) from None


def train(config: TrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
          progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train ``config`` into a new run folder ``run_dir`` (checkpoints + history.h5); continue an
    interrupted one with :func:`resume`.

    The folder is locked for the whole run (a second writer is refused) and checked before any
    work. A NaN/inf loss raises :class:`DivergedError` and leaves the last good checkpoint in place.
    """
    run_dir = Path(run_dir)

    def refuse_a_run() -> None:
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out.")

    with main_rank_folder(run_dir, refuse_a_run):
        return Run(config, run_dir, torch.device(device)).run(progress)


def resume(run_dir: str | Path, device: str | torch.device = "cpu", *, epochs: Optional[int] = None,
           expect: Optional[Mapping[str, Any]] = None, download: bool = False,
           progress: Optional[ProgressFn] = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` with the options stored there.

    epochs: None keeps the stored count; a larger one extends the run (a smaller one is refused).
    expect: options the caller asks for, by :class:`TrainConfig` field ("lr", "data.subset",
    "hyper.rho"); any that differs from the stored one raises :class:`ResumeConflict` listing
    them all. download: a runtime choice (fetch the data set if it is missing).
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"

    def resumable() -> tuple[Checkpoint, TrainConfig]:
        if not last.exists():
            raise UserError(f"--resume: no {last}; start the run without --resume.")
        ckpt, config = _read_run(last)
        check_stored_arch(last, config.arch, (expect or {}).get("arch"), trust=False)
        conflicts = [(name, value, config.option(name)) for name, value in (expect or {}).items()
                     if value != config.option(name)]
        if conflicts:
            raise ResumeConflict(run_dir, conflicts)
        if epochs is not None:
            if epochs < config.epochs:
                raise UserError(f"--epochs {epochs}: the run in {run_dir} is set to {config.epochs} epochs; "
                                "--resume can only extend it (or leave --epochs out).")
            config.epochs = epochs
        config.data.download = download
        return ckpt, config

    with main_rank_folder(run_dir, resumable) as (ckpt, config):
        run = Run(config, run_dir, torch.device(device))
        try:
            run.restore(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError):  # e.g. weights of another model
            raise _damaged(last) from None
        return run.run(progress)
