"""Raw data sources by name: each returns the train and test arrays as they are on disk.

Sources register by name (:data:`SOURCES`, which this module fills without importing torch, so
``--help`` can list them: :func:`usages`). A source returns :class:`RawSplit` pairs with images
as uint8 N×H×W×C (or float arrays used as given for ``npz``) and int64 labels. Normalisation,
subsets, label noise and augmentation are applied later, uniformly, by
:mod:`alignsam_diag.data.datasets`.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError
from ..registry import Registry

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass
class RawSplit:
    """x: uint8 N×H×W×C images, or float32 N×C×H×W / N×D arrays used exactly as given.
    y: int64 labels, shape (N,)."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class RawData:
    train: RawSplit
    test: RawSplit
    num_classes: int
    mean: Optional[tuple[float, ...]]  # per-channel mean of [0,1] pixels; None = no normalisation
    std: Optional[tuple[float, ...]]
    augment: bool                      # whether the paper's CIFAR augmentation is on by default


Reader = Callable[[Optional[str], str, bool], RawData]   # (root, argument, download) -> RawData


@dataclass(frozen=True)
class Source:
    """A data set by name. ``read(root, argument, download)`` returns its arrays; ``argument``
    names what a source needs after ``name:`` (``npz:PATH``), None for one that takes nothing."""

    read: Reader
    argument: Optional[str] = None


SOURCES: Registry[Source] = Registry("data set")


def source(name: str, argument: Optional[str] = None) -> Callable[[Reader], Reader]:
    """Register the decorated reader as the data set ``name`` (see :class:`Source`)."""
    def add(read: Reader) -> Reader:
        SOURCES.register(name)(Source(read, argument))
        return read
    return add


def usages() -> list[str]:
    """How each data set is named on the command line: ``digits``, ..., ``npz:PATH``."""
    return [name + (f":{SOURCES.get(name).argument}" if SOURCES.get(name).argument else "") for name in SOURCES]


def _require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{what} not found at {path}; {hint}")
    return path


@source("digits")
def digits(root: Optional[str], arg: str, download: bool) -> RawData:
    """scikit-learn's bundled 8×8 digits (1,797 images). Fixed split: 360 test images chosen
    by a seed-0 permutation, the same for every run."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(y))
    test, train = order[:360], order[360:]
    return RawData(RawSplit(x[train], y[train]), RawSplit(x[test], y[test]), 10,
                   mean=None, std=None, augment=False)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
        zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: not a valid IDX file ({err}); reinstall the data set.") from None


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise UserError(f"{root / (stem + '.gz')} not found; Fashion-MNIST needs the four IDX files there "
                    "(`apt-get install dataset-fashion-mnist`, or point --data-root at your copy).")


@source("fashion-mnist")
def fashion_mnist(root: Optional[str], arg: str, download: bool) -> RawData:
    """Fashion-MNIST from its four IDX files (60k train / 10k test, 28×28 grey)."""
    base = _require_dir(Path(root or FASHION_MNIST_ROOT), "Fashion-MNIST",
                        "install it with `apt-get install dataset-fashion-mnist` or pass --data-root.")
    splits = []
    for prefix in ("train", "t10k"):
        x = _read_idx(_find(base, f"{prefix}-images-idx3-ubyte"))[..., None]
        y = _read_idx(_find(base, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        splits.append(RawSplit(x, y))
    return RawData(splits[0], splits[1], 10, mean=(0.2860,), std=(0.3530,), augment=False)


# What a CIFAR batch legitimately pickles besides dicts, lists, str and bytes (opcodes, not
# classes): numpy arrays and their dtypes, under numpy 1's and numpy 2's module names.
_CIFAR_CLASSES = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only the types a CIFAR batch holds; any other class or function (a payload
    that would run code) raises :class:`pickle.UnpicklingError` before it is touched."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _CIFAR_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR batch holds only dicts, lists, "
                                     "strings, bytes and numpy arrays")


def read_cifar_batch(path: Path) -> dict[str, object]:
    """One of torchvision's CIFAR pickles, read with :class:`_CifarUnpickler` (never runs code)."""
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a CIFAR batch ({err}); replace it with torchvision's original file.") from None
    if not isinstance(entry, dict) or "data" not in entry:
        raise UserError(f"{path}: not a CIFAR batch (no 'data' entry); replace it with torchvision's original file.")
    return entry


def _cifar(root: Optional[str], download: bool, folder: str, url_name: str, num_classes: int,
           label_key: str, files: tuple[list[str], list[str]],
           mean: tuple[float, ...], std: tuple[float, ...]) -> RawData:
    base = Path(root or "data")
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
        cls(str(base), download=True)
    folder_path = _require_dir(base / folder, url_name,
                               f"expected torchvision's extracted {folder}/ under --data-root; "
                               "pass --download to fetch it.")
    splits = []
    for names in files:
        xs, ys = [], []
        for name in names:
            entry = read_cifar_batch(folder_path / name)
            if label_key not in entry:
                raise UserError(f"{folder_path / name}: not a {url_name} batch (no {label_key!r} entry).")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        splits.append(RawSplit(np.concatenate(xs), np.concatenate(ys)))
    return RawData(splits[0], splits[1], num_classes, mean, std, augment=True)


@source("cifar10")
def cifar10(root: Optional[str], arg: str, download: bool) -> RawData:
    """CIFAR-10 in torchvision's on-disk format (``<root>/cifar-10-batches-py``)."""
    return _cifar(root, download, "cifar-10-batches-py", "CIFAR-10", 10, "labels",
                  ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
                  (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@source("cifar100")
def cifar100(root: Optional[str], arg: str, download: bool) -> RawData:
    """CIFAR-100 in torchvision's on-disk format (``<root>/cifar-100-python``)."""
    return _cifar(root, download, "cifar-100-python", "CIFAR-100", 100, "fine_labels",
                  (["train"], ["test"]), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _image_folder(path: Path, classes: list[str], image_size: int) -> RawSplit:
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted((path / cls).iterdir()):
            try:
                with Image.open(file) as img:
                    img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    xs.append(np.asarray(img, dtype=np.uint8))
            except OSError:
                continue  # not an image (README, thumbs.db, ...)
            ys.append(label)
    if not xs:
        raise UserError(f"{path}: no readable images in the class folders.")
    return RawSplit(np.stack(xs), np.asarray(ys, dtype=np.int64))


@source("imagefolder", argument="PATH")
def imagefolder(root: Optional[str], arg: str, download: bool) -> RawData:
    """``imagefolder:PATH`` — PATH/train/<class>/* and PATH/val/<class>/* (or test/), class
    folders sorted as in torchvision's ImageFolder, images resized to 32×32 RGB (the image
    size can be set with ``imagefolder:PATH@SIZE``). Normalised by the training set's
    per-channel mean and standard deviation."""
    path_str, _, size = arg.partition("@")
    base = _require_dir(Path(path_str), "image folder", "give imagefolder:PATH with PATH/train and PATH/val.")
    train_dir = _require_dir(base / "train", "train split", f"create {base}/train/<class>/ folders.")
    test_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if test_dir is None:
        raise UserError(f"{base}: no val/ or test/ folder next to train/.")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if size and not (size.isdigit() and int(size) >= 1):
        raise UserError(f"imagefolder:{arg}: the size after '@' must be a whole number of pixels, "
                        f"e.g. imagefolder:{path_str}@32.")
    image_size = int(size) if size else 32
    train = _image_folder(train_dir, classes, image_size)
    test = _image_folder(test_dir, [c for c in classes if (test_dir / c).is_dir()], image_size)
    pixels = train.x.reshape(-1, 3) / 255.0
    return RawData(train, test, len(classes), tuple(pixels.mean(0)), tuple(pixels.std(0)), augment=False)


def _npz_split(arrays: dict[str, np.ndarray], x_key: str, y_key: str, path: Path) -> RawSplit:
    """Check one (x, y) pair of an ``npz:`` file: real numbers N×D or N×C×H×W, finite; N whole,
    non-negative labels."""
    x, y = arrays[x_key], arrays[y_key]
    where = f"npz:{path}"
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{where}: {x_key!r} holds {x.dtype} values; it must hold real numbers (float32).")
    if x.ndim not in (2, 4):
        raise UserError(f"{where}: {x_key!r} has shape {x.shape}; it must be N×D (features) or N×C×H×W (images).")
    if len(x) == 0:
        raise UserError(f"{where}: {x_key!r} holds no samples.")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{where}: {y_key!r} has shape {y.shape} but {x_key!r} has {len(x)} samples; "
                        f"{y_key!r} must be one label per sample.")
    if not np.isfinite(x).all():
        raise UserError(f"{where}: {x_key!r} holds NaN or infinite values.")
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)  # whole numbers stored as floats are labels all the same
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{where}: {y_key!r} holds {y.dtype} values that are not whole numbers; "
                        "labels must be class indices 0…C−1.")
    if y.min() < 0:
        raise UserError(f"{where}: {y_key!r} holds negative labels ({int(y.min())}); labels must be class indices 0…C−1.")
    return RawSplit(x.astype(np.float32), y.astype(np.int64))


@source("npz", argument="PATH")
def npz(root: Optional[str], arg: str, download: bool) -> RawData:
    """``npz:PATH`` — arrays ``x`` (real numbers, N×C×H×W or N×D) and ``y`` (class indices
    0…C−1), used exactly as given (``x`` as float32); optional ``x_test``/``y_test`` form the test
    split (else the test split is the training data). The file is read without unpickling."""
    path = Path(arg)
    if not path.is_file():
        raise UserError(f"{path}: no such .npz file.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, AttributeError) as err:
        raise UserError(f"{path}: not a readable .npz file of plain arrays ({err}); "
                        "write it with numpy.savez(path, x=..., y=...).") from None
    if "x" not in arrays or "y" not in arrays:
        raise UserError(f"{path}: needs arrays 'x' and 'y' (found {sorted(arrays)}).")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"{path}: has {'x_test' if 'x_test' in arrays else 'y_test'} without its partner; "
                        "give both x_test and y_test, or neither.")
    train = _npz_split(arrays, "x", "y", path)
    test = _npz_split(arrays, "x_test", "y_test", path) if "x_test" in arrays else train
    if test.x.shape[1:] != train.x.shape[1:]:
        raise UserError(f"{path}: x_test samples have shape {test.x.shape[1:]} but x samples {train.x.shape[1:]}.")
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return RawData(train, test, num_classes, mean=None, std=None, augment=False)


def load_source(name: str, root: Optional[str], download: bool) -> RawData:
    """``name`` is a registered source, or ``source:ARG`` (``imagefolder:PATH``, ``npz:PATH``)."""
    key, _, arg = name.partition(":")
    entry = SOURCES.get(key)
    if entry.argument and not arg:
        raise UserError(f"--dataset {key} needs a path: {key}:{entry.argument}.")
    return entry.read(root, os.path.expanduser(arg), download)
