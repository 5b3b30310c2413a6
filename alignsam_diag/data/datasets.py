"""In-memory data sets on the target device: subsets, label noise, normalisation.

Every data set used here fits in memory, so it is held as two tensors on the device
(``x`` float32 N×C×H×W or N×D, ``y`` int64 N) and batches are slices of them: no DataLoader,
no per-sample Python loop. Augmentation is done on the device by :mod:`.augment`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..errors import OptionError, UserError
from .sources import RawData, RawSplit, load_source


@dataclass
class DataSpec:
    """Everything needed to rebuild the training data of a run; stored in every checkpoint.

    name: source name (``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``,
        ``imagefolder:PATH``, ``npz:PATH``).
    root: folder of the files (None = the source's default).
    subset: keep this many training samples, chosen by ``seed`` (None = all).
    label_noise: fraction of training labels flipped to a different class, chosen by ``seed``.
    augment: the paper's CIFAR augmentation (4-px pad, random crop, flip); None = source default.
    normalise: subtract the per-channel mean and divide by the std (the source's constants).
    download: fetch a missing data set (CIFAR); a runtime choice, never stored in a checkpoint.
    """

    name: str = "digits"
    root: Optional[str] = None
    subset: Optional[int] = None
    label_noise: float = 0.0
    seed: int = 0
    augment: Optional[bool] = None
    normalise: bool = True
    download: bool = False

    def validate(self) -> None:
        """Raise a one-line :class:`UserError` for the first invalid field."""
        if not 0 <= self.seed < 2 ** 63:
            raise OptionError("seed", self.seed, "must be a whole number between 0 and 2**63 - 1.")
        if not 0.0 <= self.label_noise <= 1.0:
            raise OptionError("label_noise", self.label_noise, "must be a fraction between 0 and 1.")
        if self.subset is not None and self.subset < 1:
            raise OptionError("subset", self.subset, "must be at least 1.")

    def to_dict(self) -> dict[str, Any]:
        """The stored form: every field but ``download``."""
        return {k: v for k, v in asdict(self).items() if k != "download"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        """Rebuild a stored spec (e.g. from a checkpoint: data from a stranger). Every field must
        have its type; ``download`` is never taken from a file."""
        types = {"name": (str,), "root": (str, type(None)), "subset": (int, type(None)),
                 "label_noise": (float, int), "seed": (int,), "augment": (bool, type(None)), "normalise": (bool,)}
        wrong = [k for k, allowed in types.items()
                 if k in d and (not isinstance(d[k], allowed) or isinstance(d[k], bool) and bool not in allowed)]
        if wrong:
            raise UserError(f"the stored data spec has invalid {', '.join(wrong)} "
                            f"({', '.join(repr(d[k]) for k in wrong)}); pass --dataset (and --data-root).")
        return cls(**{k: d[k] for k in types if k in d})


@dataclass
class ArrayDataset:
    """A split held as tensors.

    x: float32 N×C×H×W (or N×D), normalised, on the device.
    y: int64 (N,), the labels training sees (noisy where label noise was applied).
    clean_y: int64 (N,), the original labels.
    """

    x: torch.Tensor
    y: torch.Tensor
    clean_y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def noisy(self) -> torch.Tensor:
        """Boolean mask (N,) of the samples whose label was flipped."""
        return self.y != self.clean_y

    def select(self, index: torch.Tensor) -> "ArrayDataset":
        index = index.to(self.y.device)
        return ArrayDataset(self.x[index], self.y[index], self.clean_y[index])


@dataclass
class DataSplits:
    """Train and test splits plus what a model needs to know about them."""

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    in_channels: int
    image_size: int
    augment: bool
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """The first ``size`` entries of a permutation of range(n) drawn with ``seed``, sorted.

    The same (n, size, seed) always gives the same samples, on any device."""
    if not 0 < size <= n:
        raise OptionError("subset", size, f"must be between 1 and the training set size {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def flip_labels(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Symmetric label noise: exactly round(rate·N) labels, chosen by ``seed``, each moved to
    a uniformly drawn *different* class. Returns a new array."""
    if not 0.0 <= rate <= 1.0:
        raise OptionError("label_noise", rate, "must be a fraction between 0 and 1.")
    rng = np.random.default_rng(seed)
    flipped = y.copy()
    chosen = rng.choice(len(y), size=round(rate * len(y)), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))
    flipped[chosen] = (y[chosen] + shift) % num_classes
    return flipped


def _to_tensor(split: RawSplit, raw: RawData, normalise: bool, device: torch.device) -> torch.Tensor:
    if split.x.dtype != np.uint8:  # npz: used exactly as given
        return torch.as_tensor(split.x, dtype=torch.float32).to(device)
    x = torch.as_tensor(split.x).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if normalise and raw.mean is not None:
        mean = torch.tensor(raw.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(raw.std, device=device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def load_data(spec: DataSpec, device: str | torch.device = "cpu") -> DataSplits:
    """Load ``spec`` onto ``device``: subset first, then label noise (training split only)."""
    spec.validate()
    device = torch.device(device)
    raw = load_source(spec.name, spec.root, spec.download)
    train_y = raw.train.y
    train_x = raw.train.x
    if spec.subset is not None:
        keep = subset_indices(len(train_y), spec.subset, spec.seed).numpy()
        train_x, train_y = train_x[keep], train_y[keep]
    noisy_y = flip_labels(train_y, spec.label_noise, raw.num_classes, spec.seed) if spec.label_noise else train_y
    x_train = _to_tensor(RawSplit(train_x, train_y), raw, spec.normalise, device)
    x_test = _to_tensor(raw.test, raw, spec.normalise, device)
    train = ArrayDataset(x_train, torch.as_tensor(noisy_y).to(device), torch.as_tensor(train_y).to(device))
    test_y = torch.as_tensor(raw.test.y).to(device)
    test = ArrayDataset(x_test, test_y, test_y)
    image_dims = x_train.shape[1:]
    return DataSplits(
        train=train, test=test, num_classes=raw.num_classes,
        in_channels=int(image_dims[0]) if len(image_dims) == 3 else 1,
        image_size=int(image_dims[-1]) if len(image_dims) == 3 else int(image_dims[0]),
        augment=raw.augment if spec.augment is None else spec.augment,
        mean=raw.mean, std=raw.std,
    )


def sample_subset(ds: ArrayDataset, n: Optional[int], seed: int) -> ArrayDataset:
    """A fixed, seeded subset of ``n`` samples of ``ds`` (all of it when n is None or ≥ len)."""
    if n is None or n >= len(ds):
        return ds
    return ds.select(subset_indices(len(ds), n, seed))


def fixed_batches(ds: ArrayDataset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``ds`` cut into consecutive batches in its stored order (the last may be smaller);
    no augmentation. For analyses that need a fixed data order."""
    if batch_size < 1:
        raise OptionError("batch_size", batch_size, "must be at least 1.")
    return [(ds.x[i:i + batch_size], ds.y[i:i + batch_size]) for i in range(0, len(ds), batch_size)]
