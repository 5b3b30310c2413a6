"""What is inside a checkpoint, as plain data (the CLI renders it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from .checkpoint import LoadedCheckpoint
from .registry import count_parameters


@dataclass
class CheckpointSummary:
    """source: file format; arch/num_classes/...: the model spec; parameters: total count;
    parameters_by_layer: layer type (Conv2d, Linear, BatchNorm2d...) -> own parameters;
    meta: stored metadata (epoch, step, optimizer, data, metrics, version); a run of ``train``
    stores under ``optimizer`` its settings as resolved, defaults included (variant and every
    hyper-parameter, |B^a|, base optimizer, LR schedule and warm-up:
    :meth:`alignsam_diag.train.Run.settings`), shown as stored, never re-derived from today's defaults;
    history: per-epoch columns when the file carries a training history."""

    source: str
    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    parameters: int
    parameters_by_layer: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)
    history: Optional[dict[str, list[float]]] = None


def parameters_by_layer(model: nn.Module) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for module in model.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own:
            counts[type(module).__name__] += own
    return dict(counts.most_common())


META_KEYS = ("version", "epoch", "step", "optimizer", "data", "metrics")  # shown, in this order, when present


def _shown(ckpt: LoadedCheckpoint) -> tuple[dict[str, Any], Any]:
    """(metadata to show, history) of the file: ours through its :class:`Checkpoint` record; a third
    party's from its other entries (the known keys, then any other plain number or string)."""
    if ckpt.record is not None:
        stored = ckpt.record.metadata()
        return {k: stored[k] for k in META_KEYS if k in stored}, ckpt.record.history
    meta = {k: ckpt.meta[k] for k in META_KEYS if k in ckpt.meta}
    meta.update({k: v for k, v in sorted(ckpt.meta.items())
                 if k not in (*META_KEYS, "history", "model", "config", "format", "rng")
                 and isinstance(v, (int, float, str, bool))})
    return meta, ckpt.meta.get("history")


def summarise(ckpt: LoadedCheckpoint) -> CheckpointSummary:
    meta, history = _shown(ckpt)
    return CheckpointSummary(
        source=ckpt.source, arch=ckpt.spec.arch, num_classes=ckpt.spec.num_classes,
        in_channels=ckpt.spec.in_channels, image_size=ckpt.spec.image_size,
        parameters=count_parameters(ckpt.model), parameters_by_layer=parameters_by_layer(ckpt.model),
        meta=meta, history=dict(history) if isinstance(history, dict) and history.get("epoch") else None)
