"""Data sets by name, label noise, augmentation, fixed batches for analyses."""

from .datasets import (ArrayDataset, DataSpec, DataSplits, fixed_batches, flip_labels, load_data,
                       sample_subset, subset_indices)
from .sources import SOURCES

__all__ = ["ArrayDataset", "DataSpec", "DataSplits", "SOURCES", "fixed_batches", "flip_labels",
           "load_data", "sample_subset", "subset_indices"]
