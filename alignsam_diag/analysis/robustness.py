"""Robustness evaluation (paper Table 6; DESIGN §8): top-1 / top-5 per (corruption, severity),
their means, clean accuracy, and ImageNet-C's corruption errors with AlexNet normalisation.

- CE_c = Σ_s E_{s,c} / Σ_s E^AlexNet_{s,c} (E: top-1 error), mCE = 100 × mean of CE_c over the 15
  benchmark corruptions; relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^AlexNet_{s,c} −
  E^AlexNet_clean), relative mCE = 100 × their mean. Defined for ImageNet-C with all 15 benchmark
  corruptions at all 5 severities (relative: with the clean ImageNet error too); otherwise the
  summary says why they are not given.
- "ImageNet-C accuracy" (Table 6) = the mean top-1 (top-5) over the evaluated cells, 15 × 5 on
  the whole benchmark. Top-5 is top-min(5, classes).

:func:`evaluate_robustness` scores checkpoints on suites (:mod:`alignsam_diag.data.suites`) and
stores every finished cell at once (:mod:`alignsam_diag.store.robustness`), so a rerun computes
only the missing cells; under ``torchrun`` the images of each cell are shared out among the ranks
and the counts summed (:meth:`_Run._score`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..data import DataSpec
from ..data.robustness_constants import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS,
                                         IMAGENET_MEAN, IMAGENET_STD)
from ..data.sources import load_source
from ..data.suite_types import CLEAN, SEVERITIES, Batch, Cell, Normalisation, Suite, SuiteRequest
from ..data.suites import CorruptSuite, open_suite, with_dataset
from ..distributed import main_rank_lock, on_every_rank, on_main_rank
from ..errors import OptionError, UserError
from ..models.checkpoint import LoadedCheckpoint, load_checkpoint
from ..models.probe import check_model_takes
from ..progress import ProgressFn, report
from ..store.landscape import group_names
from ..store.robustness import CellScore, SuiteRecord, read_records, write_records
from .landscape import parameter_sha256

TOPK = 5
AMP = ("none", "bf16")


@dataclass
class CorruptionErrors:
    """ce: per benchmark corruption, Σ_s E / Σ_s E^AlexNet (1 = AlexNet's error); mce: 100 × their
    mean (percent of AlexNet's); relative_ce / relative_mce: the same with the clean errors
    subtracted (None without a clean error)."""

    ce: dict[str, float]
    mce: float
    relative_ce: Optional[dict[str, float]] = None
    relative_mce: Optional[float] = None


def corruption_errors(errors: Mapping[str, Sequence[float]], clean_error: Optional[float] = None) -> CorruptionErrors:
    """CE, mCE and (with ``clean_error``) relative CE and mCE from top-1 errors (fractions):
    ``errors[corruption]`` holds severities 1…5, for exactly the 15 benchmark corruptions."""
    missing = [c for c in BENCHMARK_CORRUPTIONS if c not in errors]
    extra = [c for c in errors if c not in ALEXNET_ERRORS]
    if missing or extra:
        raise UserError("mCE is the mean over exactly the 15 ImageNet-C benchmark corruptions: "
                        + "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                                    + ([f"not a benchmark corruption: {', '.join(extra)}"] if extra else [])) + ".")
    short = [c for c in BENCHMARK_CORRUPTIONS if len(errors[c]) != len(SEVERITIES)]
    if short:
        raise UserError(f"mCE needs the errors at all 5 severities; {', '.join(short)} has "
                        f"{len(errors[short[0]])}.")
    ce = {c: sum(errors[c]) / sum(ALEXNET_ERRORS[c]) for c in BENCHMARK_CORRUPTIONS}
    result = CorruptionErrors(ce, 100.0 * sum(ce.values()) / len(ce))
    if clean_error is not None:
        result.relative_ce = {c: sum(e - clean_error for e in errors[c])
                              / sum(a - ALEXNET_CLEAN_ERROR for a in ALEXNET_ERRORS[c]) for c in BENCHMARK_CORRUPTIONS}
        result.relative_mce = 100.0 * sum(result.relative_ce.values()) / len(ce)
    return result


def _order(score: CellScore) -> tuple[int, int]:
    known = score.corruption in ALL_CORRUPTIONS
    return (1 + ALL_CORRUPTIONS.index(score.corruption) if known else 0), score.severity


@dataclass
class SuiteSummary:
    """One checkpoint on one suite. cells: its corrupted cells (``renditions`` for ImageNet-R),
    in the canonical corruption order; clean: its clean cell, or for ImageNet-C/R the clean
    ImageNet cell of the same checkpoint in the same file (None: not on disk); errors: CE/mCE
    where defined; note: why mCE (or relative mCE) is not given; cells_computed: cells this call
    evaluated."""

    checkpoint: str
    suite: str
    settings: dict[str, Any]
    cells: list[CellScore]
    clean: Optional[CellScore]
    errors: Optional[CorruptionErrors]
    note: Optional[str]
    optimizer: Optional[str] = None
    cells_computed: int = 0

    def _mean(self, key: str) -> Optional[float]:
        if not self.cells:
            return None if self.clean is None else getattr(self.clean, key)
        return sum(getattr(c, key) for c in self.cells) / len(self.cells)

    @property
    def top1(self) -> Optional[float]:
        """Mean top-1 over the cells (the clean accuracy for the ``imagenet`` suite)."""
        return self._mean("top1")

    @property
    def top5(self) -> Optional[float]:
        return self._mean("top5")


def summarise(record: SuiteRecord, clean: Optional[CellScore] = None,
              cells: Optional[Iterable[Cell]] = None) -> SuiteSummary:
    """The summary of ``record`` over ``cells`` (None: every stored cell). ``clean``: the clean
    cell to use when the record has none (ImageNet's, for ImageNet-C and ImageNet-R)."""
    wanted = None if cells is None else {(c.corruption, c.severity) for c in cells}
    chosen = [s for s in record.cells if wanted is None or (s.corruption, s.severity) in wanted]
    clean = record.score(CLEAN, 0) or clean
    corrupted = sorted((s for s in chosen if s.corruption != CLEAN), key=_order)
    errors, note = None, None
    if record.suite != "imagenet-c":
        note = None if record.suite == "imagenet" else (
            f"mCE is not defined for {record.suite}: AlexNet's normalising errors exist for ImageNet-C only.")
    else:
        found = {(s.corruption, s.severity): s.error for s in corrupted}
        missing = [f"{c}/{s}" for c in BENCHMARK_CORRUPTIONS for s in SEVERITIES if (c, s) not in found]
        if missing:
            note = (f"mCE is not defined: it needs all 15 benchmark corruptions at severities 1-5, and "
                    f"{len(missing)} cells are missing ({', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}).")
        else:
            errors = corruption_errors({c: [found[c, s] for s in SEVERITIES] for c in BENCHMARK_CORRUPTIONS},
                                       None if clean is None else clean.error)
            if clean is None:
                note = ("relative mCE is not defined: it needs the clean ImageNet error; evaluate --suite imagenet "
                        "into the same --out.")
    return SuiteSummary(record.checkpoint, record.suite, record.settings, corrupted, clean, errors, note,
                        record.optimizer)


def summaries(records: Sequence[SuiteRecord], checkpoints: Optional[Sequence[str]] = None) -> list[SuiteSummary]:
    """Every record's summary (of ``checkpoints`` only, when given, in their order), ImageNet-C and
    ImageNet-R taking the clean cell of the same checkpoint's ``imagenet`` record."""
    clean = {r.checkpoint: r.score(CLEAN, 0) for r in records if r.suite == "imagenet"}
    order = list(checkpoints) if checkpoints is not None else list(dict.fromkeys(r.checkpoint for r in records))
    return [summarise(r, clean.get(r.checkpoint)) for c in order for r in records if r.checkpoint == c]


def model_input(images: torch.Tensor, device: torch.device, normalisation: Normalisation) -> torch.Tensor:
    """uint8 N×C×H×W images as the model sees them: pixels / 255, then ``(x − mean) / std`` per
    channel, in the order and precision training's data loading uses."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    if normalisation.mean:  # in place: half the memory traffic, the same values as ``(x - mean) / std``
        x.sub_(torch.tensor(normalisation.mean, device=device).view(1, -1, 1, 1))
        x.div_(torch.tensor(normalisation.std, device=device).view(1, -1, 1, 1))
    return x


@torch.inference_mode()
def score_cell(model: nn.Module, batches: Iterable[Batch], *, device: torch.device, normalisation: Normalisation,
               indices: Optional[list[int]] = None, amp: str = "none",
               on_batch: Optional[Callable[[int], None]] = None) -> tuple[int, int, int]:
    """(top-1 hits, top-5 hits, images) of ``model`` over ``batches`` of uint8 N×C×H×W images:
    pixels / 255, then ``(x − mean) / std`` as training normalised them, outputs restricted to
    ``indices`` when given; bf16 autocast with ``amp="bf16"``. ``on_batch(n)`` after each batch."""
    pick = None if indices is None else torch.tensor(indices, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for images, labels in batches:
        x = model_input(images, device, normalisation)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)
        if pick is not None:
            logits = logits.index_select(1, pick)
        best = logits.float().topk(min(TOPK, logits.shape[1]), dim=1).indices
        hits = best == labels[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        count += len(labels)
        if on_batch is not None:
            on_batch(len(labels))
    return int(top1), int(top5), count


def batch_block(n: int, batch_size: int, group: distributed.Group) -> range:
    """This rank's images of a cell of ``n``: those of its contiguous block (:meth:`Group.shard
    <alignsam_diag.distributed.Group.shard>`) of the ⌈n / batch_size⌉ batches one process makes,
    so every batch a rank scores is one of one process's batches (all of ``range(n)`` alone)."""
    batches = group.shard(-(-n // batch_size))
    return range(min(n, batches.start * batch_size), min(n, batches.stop * batch_size))


@dataclass(kw_only=True)
class RobustnessOptions:
    """batch_size: images per forward; workers: processes that decode images / generate
    corruptions (0: this one); amp: ``none`` or ``bf16`` (autocast); normalise: ``auto`` (the
    checkpoint's own data normalisation; without one the suite's standard: ImageNet's for the
    ImageNet suites, the data set's for ``corrupt``), ``none``, ``imagenet``, or ``MEAN/STD`` with
    comma-separated channel values (``0.5,0.5,0.5/0.25,0.25,0.25``)."""

    batch_size: int = 256
    workers: int = 0
    amp: str = "none"
    normalise: str = "auto"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise OptionError("batch_size", self.batch_size, "must be at least 1.")
        if self.workers < 0:
            raise OptionError("workers", self.workers, "must be 0 (this process) or more.")
        if self.amp not in AMP:
            raise OptionError("amp", self.amp, "choose none or bf16.")
        if self.normalise not in ("auto", "none", "imagenet"):
            parse_normalisation(self.normalise)


def parse_normalisation(text: str) -> Normalisation:
    """``MEAN/STD``, each comma-separated per channel, std > 0."""
    try:
        mean, std = ([float(v) for v in part.split(",")] for part in text.split("/"))
    except ValueError:
        mean = std = []
    if not mean or len(mean) != len(std) or min(std) <= 0:
        raise OptionError("normalise", text, "write auto, none, imagenet, or MEAN/STD per channel, e.g. "
                          "0.485,0.456,0.406/0.229,0.224,0.225 (std > 0).")
    return Normalisation(tuple(mean), tuple(std))


def resolve_normalisation(choice: str, checkpoint: LoadedCheckpoint, suite: Suite, name: str) -> Normalisation:
    """The normalisation ``choice`` means for ``checkpoint`` on ``suite`` (see :class:`RobustnessOptions`)."""
    if choice == "none":
        chosen = Normalisation()
    elif choice == "imagenet":
        chosen = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
    elif choice != "auto":
        chosen = parse_normalisation(choice)
    elif checkpoint.data is not None:
        spec = DataSpec.from_dict(checkpoint.data)
        if not spec.normalise:
            chosen = Normalisation()
        elif suite.key == f"corrupt:{spec.name}" and suite.normalisation is not None:
            chosen = suite.normalisation
        else:
            try:
                raw = load_source(spec.name, spec.root, False)
            except UserError as err:
                raise UserError(f"{name}: its normalisation comes from its data set {spec.name}, which cannot be "
                                f"read here ({err}); pass --normalise.") from None
            chosen = Normalisation(raw.mean or (), raw.std or ())
    elif suite.normalisation is None:
        raise UserError(f"{name}: the checkpoint does not record its data normalisation and {suite.key} has no "
                        "standard one; pass --normalise none, imagenet or MEAN/STD.")
    else:
        chosen = suite.normalisation
    if chosen.mean and len(chosen.mean) != suite.channels:
        raise UserError(f"{name}: the normalisation has {len(chosen.mean)} channel(s) but {suite.key}'s images have "
                        f"{suite.channels}; pass --normalise with {suite.channels} values each.")
    return chosen


@dataclass(kw_only=True)
class ModelSource:
    """How checkpoints are rebuilt (as for ``eigs``): ``arch``, ``num_classes``, ``arch_kwargs``
    override or complete what a file records; ``trust`` allows full unpickling."""

    arch: Optional[str] = None
    num_classes: Optional[int] = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    trust: bool = False

    def load(self, path: str, channels: Optional[int], image_size: Optional[int],
             device: torch.device) -> LoadedCheckpoint:
        return load_checkpoint(path, arch=self.arch, num_classes=self.num_classes, arch_kwargs=self.arch_kwargs,
                               trust=self.trust, device=device, in_channels=channels, image_size=image_size)


class _Run:
    """One :func:`evaluate_robustness` call: the file's records, the suites opened, models loaded."""

    def __init__(self, out: Path, source: ModelSource, options: RobustnessOptions, device: torch.device,
                 progress: Optional[ProgressFn]) -> None:
        self.out, self.source, self.options, self.device, self.progress = out, source, options, device, progress
        self.records: list[SuiteRecord] = on_main_rank(lambda: read_records(out) if out.exists() else [],
                                                       what=f"reading {out}")
        self.suites: dict[SuiteRequest, Suite] = {}
        self.models: dict[tuple[str, Optional[int], Optional[int]], LoadedCheckpoint] = {}

    def model(self, checkpoint: str, channels: Optional[int], image_size: Optional[int]) -> LoadedCheckpoint:
        """The checkpoint's model for images of ``channels``×``image_size``² (None: as it records);
        only the current checkpoint's models are kept."""
        if any(key[0] != checkpoint for key in self.models):
            self.models.clear()
        ours = next((m for m in self.models.values() if m.record is not None), None)
        key = (checkpoint, channels, image_size)
        if ours is None and key not in self.models:
            self.models[key] = self.source.load(checkpoint, channels, image_size, self.device)
        return ours or self.models[key]

    def suite(self, request: SuiteRequest) -> Suite:
        if request not in self.suites:
            self.suites[request] = open_suite(request)
        return self.suites[request]

    def record(self, checkpoint: str, suite: Suite, settings: dict[str, Any], sha: str,
               optimizer: Optional[str]) -> SuiteRecord:
        """The stored record of (checkpoint, suite), checked against the settings and parameters
        now; a new, empty one (added to the file's) when there is none."""
        stored = next((r for r in self.records if (r.checkpoint, r.suite) == (checkpoint, suite.key)), None)
        if stored is None:
            stored = SuiteRecord(checkpoint, suite.key, settings, sha, optimizer)
            self.records.append(stored)
            return stored
        differ = [f"{k} {stored.settings.get(k)!r} (now {settings.get(k)!r})"
                  for k in sorted(set(settings) | set(stored.settings)) if stored.settings.get(k) != settings.get(k)]
        if differ:
            raise UserError(f"{self.out} holds {suite.key} results of {checkpoint} made with other settings: "
                            f"{'; '.join(differ)}. Rerun with the same options to resume, or choose another --out.")
        if stored.params_sha256 != sha:
            raise UserError(f"{checkpoint} has changed since its {suite.key} results in {self.out} were made; "
                            "choose another --out.")
        return stored

    def evaluate(self, checkpoint: str, label: str, request: SuiteRequest) -> SuiteSummary:
        """Score ``checkpoint`` on ``request``'s suite: only its cells missing from the file."""
        suite, model, normalisation, record = on_every_rank(self._open, checkpoint, request,
                                                            what=f"opening {request.name} for {checkpoint}")
        missing = [cell for cell in suite.cells if record.score(cell.corruption, cell.severity) is None]
        if missing:
            self._prepare(suite, missing)
            indices = on_every_rank(self._check_model, model, suite, missing[0], normalisation, checkpoint,
                                    what=f"checking {checkpoint} on {suite.key}")
            self._score(record, suite, missing, model, normalisation, indices, f"{label} {suite.key}")
        clean = next((r.score(CLEAN, 0) for r in self.records if r.checkpoint == checkpoint and r.suite == "imagenet"),
                     None)
        summary = summarise(record, clean, suite.cells)
        summary.cells_computed = len(missing)
        return summary

    def _open(self, checkpoint: str, request: SuiteRequest) -> tuple[Suite, nn.Module, Normalisation, SuiteRecord]:
        """The suite, the model in eval mode, its normalisation and the record its results go to."""
        if request.name == "corrupt" and request.dataset is None:
            stored = self.model(checkpoint, None, None).data
            if stored is None:
                raise UserError(f"{checkpoint}: the checkpoint does not say which data it was trained on; "
                                "pass --dataset for the corrupt suite.")
            spec = DataSpec.from_dict(stored)
            request = with_dataset(request, spec.name, spec.root)
        suite = self.suite(request)
        loaded = self.model(checkpoint, suite.channels, suite.image_size)
        model = loaded.model.eval()
        normalisation = resolve_normalisation(self.options.normalise, loaded, suite, checkpoint)
        settings = {**suite.settings, "normalisation": normalisation.as_dict(), "amp": self.options.amp}
        return suite, model, normalisation, self.record(checkpoint, suite, settings, parameter_sha256(model),
                                                        loaded.optimizer)

    def _prepare(self, suite: Suite, cells: list[Cell]) -> None:
        """Make ``cells`` ready to read. Under several processes, for generated corruptions: rank 0
        finds the cells missing from the cache, every rank corrupts its block of the images (each
        image's seed is its own, so the blocks join into one process's images), rank 0 joins them
        and writes the cache, and every rank reads the cache back. No rank waits on another's whole
        generation: each collective waits only for the slowest rank's block of one cell."""
        group = distributed.current()
        if not group.distributed or not isinstance(suite, CorruptSuite):
            on_every_rank(suite.prepare, cells, self.options.workers, self.progress, what=f"preparing {suite.key}")
            return
        todo = on_main_rank(suite.missing, cells, what=f"checking the corruption cache of {suite.key}")
        block = group.shard(suite.size(Cell(CLEAN)))
        with contextlib.closing(suite.corrupted(todo, block, self.options.workers, self.progress)) as shares:
            for cell in todo:
                _, share = on_every_rank(next, shares, what=f"corrupting {suite.key} {cell}")
                with distributed.collectives(f"gathering the corrupted images of {suite.key} {cell}"):
                    blocks = distributed.all_gather_objects(share)
                on_main_rank(suite.store, cell, np.concatenate(blocks), what=f"caching {suite.key} {cell}")
        on_every_rank(suite.load, cells, what=f"reading the corruption cache of {suite.key}")

    def _score(self, record: SuiteRecord, suite: Suite, cells: list[Cell], model: nn.Module,
               normalisation: Normalisation, indices: Optional[list[int]], task: str) -> None:
        """Score ``cells`` one by one, each stored in the file as soon as it is finished. Under
        several processes each rank scores its block of each cell's batches (:func:`batch_block`)
        and the counts are summed: the same batches as one process, so the same counts."""
        group = distributed.current()
        batch_size = self.options.batch_size
        spans = {cell: batch_block(suite.size(cell), batch_size, group) for cell in cells}
        total, done = sum(len(span) for span in spans.values()), 0
        for cell in cells:
            def seen(n: int, cell: Cell = cell) -> None:
                nonlocal done
                done += n
                report(self.progress, task, done, total, cell=str(cell))
            start = time.perf_counter()
            counts = on_every_rank(score_cell, model, suite.batches(cell, batch_size, self.options.workers, spans[cell]),
                                   device=self.device, normalisation=normalisation, indices=indices,
                                   amp=self.options.amp, on_batch=seen, what=f"scoring {task} {cell}")
            summed = torch.tensor(counts, dtype=torch.int64, device=self.device)
            with distributed.collectives(f"summing the scores of {task} {cell}"):
                distributed.all_reduce_sum(summed)
            top1, top5, samples = (int(v) for v in summed.tolist())
            record.cells.append(CellScore(cell.corruption, cell.severity, top1, top5, samples,
                                          time.perf_counter() - start))
            on_main_rank(write_records, self.out, self.records, what=f"writing {self.out}")

    def _check_model(self, model: nn.Module, suite: Suite, cell: Cell, normalisation: Normalisation,
                     name: str) -> Optional[list[int]]:
        """One forward pass on two of ``cell``'s images: the model must take them; returns the
        outputs that are the suite's classes (:meth:`~alignsam_diag.data.suite_types.Suite.output_indices`)."""
        images, labels = next(iter(suite.batches(cell, 2)))
        x = model_input(images, self.device, normalisation)
        hint = f"evaluate a model of {suite.key}'s images ({suite.channels}×{suite.image_size}×{suite.image_size})"
        check_model_takes(model, x, torch.zeros_like(labels), name, hint)
        with torch.inference_mode():
            outputs = model(x[:1]).shape[1]
        return suite.output_indices(outputs, name)


def evaluate_robustness(out: str | Path, checkpoints: Sequence[str], requests: Sequence[SuiteRequest], *,
                        source: Optional[ModelSource] = None, options: Optional[RobustnessOptions] = None,
                        device: str | torch.device = "cpu",
                        progress: Optional[ProgressFn] = None) -> list[SuiteSummary]:
    """Score every checkpoint on every suite of ``requests``, cell by cell, into ``out`` (HDF5,
    :mod:`alignsam_diag.store.robustness`; locked for the call, rewritten after every cell).
    Under several processes (``torchrun``) each rank scores its block of every cell's batches and
    the counts are summed, so the results are one process's; rank 0 alone locks, reads and
    writes ``out`` (and the corruption cache, see :meth:`_Run._prepare`).

    Cells already in ``out`` for the same checkpoint, suite and settings are not recomputed; other
    settings, or a checkpoint whose parameters changed, are a one-line :class:`UserError`. Progress
    is reported per batch as task ``<checkpoint> <suite>`` (images done), generation as ``corrupt``.
    Returns one summary per (checkpoint, suite), over the cells of this call's suites."""
    options = options or RobustnessOptions()
    options.validate()
    for request in requests:
        request.validate()
    out = Path(out)
    with main_rank_lock(out):
        run = _Run(out, source or ModelSource(), options, torch.device(device), progress)
        labels = group_names(checkpoints)
        return [run.evaluate(str(c), label, request) for c, label in zip(checkpoints, labels) for request in requests]

