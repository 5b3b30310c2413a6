"""From a checkpoint path and data options to what an analysis needs: the model and a fixed
set of samples.

Shared by every analysis (eigs, landscape, cosine, robustness) and usable from a notebook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .data import ArrayDataset, DataSpec, DataSplits, fixed_batches, load_data, sample_subset
from .errors import OptionError, UserError
from .models.checkpoint import LoadedCheckpoint, load_checkpoint
from .models.probe import check_model_takes


@dataclass
class AnalysisInputs:
    """checkpoint: the loaded model (eval mode, on the device) and its metadata.
    data: the chosen split's samples (a seeded subset unless all were asked for).
    batches: ``data`` cut into fixed-order batches of (x N×C×H×W, y N)."""

    checkpoint: LoadedCheckpoint
    splits: DataSplits
    data: ArrayDataset
    batches: list[tuple[torch.Tensor, torch.Tensor]]


def load_inputs(path: str | os.PathLike, *, data: Optional[DataSpec] = None,
                data_root: Optional[str] = None, split: str = "train",
                samples: Optional[int] = 4096, seed: int = 0, batch_size: int = 512,
                arch: Optional[str] = None, num_classes: Optional[int] = None,
                arch_kwargs: Optional[dict[str, Any]] = None, trust: bool = False,
                device: str | torch.device = "cpu") -> AnalysisInputs:
    """Load the model in ``path`` and ``samples`` samples (None = all) of ``split``.

    The data are ``data`` when given, else the data set the checkpoint was trained on
    (ours record it, label noise and subset included; ``data_root`` relocates its files).
    Third-party checkpoints need ``data``.
    """
    if split not in ("train", "test"):
        raise OptionError("split", split, "choose train or test.")
    if samples is not None and samples < 1:
        raise OptionError("samples", samples, "must be at least 1.")
    splits = load_data(data, device) if data is not None else None
    ckpt = load_checkpoint(path, arch=arch, num_classes=num_classes if num_classes is not None or splits is None else splits.num_classes,
                           arch_kwargs=arch_kwargs, trust=trust, device=device,
                           in_channels=splits.in_channels if splits else None,
                           image_size=splits.image_size if splits else None)
    if splits is None:
        stored = _stored_data(path, ckpt)
        stored.root = data_root or stored.root
        splits = load_data(stored, device)
    chosen = sample_subset(splits.train if split == "train" else splits.test, samples, seed)
    check_model_takes(ckpt.model, chosen.x, chosen.y, str(path), "pass the --dataset it was trained on, or "
                      "--arch/--arch-kwargs that fit the data")
    return AnalysisInputs(ckpt, splits, chosen, fixed_batches(chosen, batch_size))


def _stored_data(path: str | os.PathLike, ckpt: LoadedCheckpoint) -> DataSpec:
    """The data spec our checkpoint records (``Checkpoint.data``), checked field by field;
    a one-line :class:`UserError` naming ``path`` for a file without one or with an altered one."""
    if ckpt.record is None or ckpt.record.data is None:
        raise UserError(f"{path}: the checkpoint does not say which data it was trained on; pass --dataset.")
    try:
        return DataSpec.from_dict(ckpt.record.data)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
