"""Data sets by name, label noise, augmentation, fixed batches for analyses.

The registry of data sets (:data:`SOURCES`) loads without torch, so ``--help`` can list it; the
rest (:mod:`.datasets`, which needs torch) is imported on first use."""

from importlib import import_module
from typing import Any

from .sources import SOURCES

_DATASETS = ("ArrayDataset", "DataSpec", "DataSplits", "fixed_batches", "flip_labels", "load_data",
             "sample_subset", "subset_indices")


def __getattr__(name: str) -> Any:
    if name in _DATASETS:
        return getattr(import_module(f"{__name__}.datasets"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SOURCES", *_DATASETS]
