"""Corruptions of any data set's images, made with ``imagecorruptions-imaug`` and cached on disk.

The 15 ImageNet-C benchmark corruptions and the 4 extra ones, severities 1–5, are applied image
by image to uint8 H×W×C arrays. Each image gets its own seed, drawn from (seed, corruption,
severity, image index), so the result does not depend on how the work is split across worker
processes. ``imagecorruptions`` needs RGB images of at least 32×32 pixels; other images are
handled as follows (:func:`corrupt_image`):

- grayscale (C = 1): replicated to 3 channels for corrupting, then brought back to one channel
  as luma (0.299 R + 0.587 G + 0.114 B, PIL's ``L``), so colour a corruption adds (frost) ends
  up as brightness;
- smaller than 32 px on a side (Fashion-MNIST 28 px, digits 8 px): enlarged by the smallest whole
  factor k that reaches 32 px (nearest neighbour: each pixel becomes a k×k block), corrupted,
  then reduced by the same factor (the mean of each k×k block), so an image that no corruption
  touched comes back exactly. The corruptions' sizes in pixels (blur radii, noise grain) are
  ImageNet-C's, so in the original pixels they act 1/k as large.

The results are not the released ImageNet-C or CIFAR-C: they are the same corruption functions
applied to another data set. Each (data set, corruption, severity, seed) is generated once and
cached as ``<cache>/<data set>/<corruption>/severity<s>-seed<seed>.npy`` (uint8, N×H×W×C, read
back memory-mapped) beside a ``.json`` key: the data set's name and root, a SHA-256 of its test
images and labels, the corruption, severity and seed, the ``imagecorruptions-imaug`` version and
:data:`METHOD`. A cache file whose key differs from the wanted one is regenerated.

This module needs numpy only (not torch), so the worker processes it starts load quickly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..files import atomic_write
from ..progress import ProgressFn, report
from .robustness_constants import ALL_CORRUPTIONS

MIN_SIZE = 32  # imagecorruptions refuses smaller images
METHOD = "luma-gray, nearest-up/box-down by whole factor to >= 32 px, per-image SeedSequence seeds; v1"
PACKAGE = "imagecorruptions-imaug"
SEEDED = ("glass_blur", "impulse_noise")  # take a seed argument; the others draw from numpy's global state
LUMA = np.array([0.299, 0.587, 0.114])


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/alignsam-diag/corruptions`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alignsam-diag" / "corruptions"


def _library() -> Any:
    """The ``imagecorruptions`` module, imported on first use (it pulls in numba, OpenCV, scikit-image)."""
    try:
        import imagecorruptions
    except ImportError:
        raise UserError(f"the corrupt suite needs {PACKAGE}: pip install {PACKAGE} "
                        "(or alignsam-diag[corruptions]).") from None
    return imagecorruptions


@functools.cache
def library_version() -> str:
    """The installed ``imagecorruptions-imaug`` version (read without importing it), or ``missing``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "missing"


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of image ``index`` (a 32-bit integer), the same however the images are split."""
    entropy = [seed, ALL_CORRUPTIONS.index(corruption), severity, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def scale_factor(height: int, width: int) -> int:
    """The whole factor that brings the shorter side to at least :data:`MIN_SIZE` pixels (1 if it is)."""
    return max(1, math.ceil(MIN_SIZE / min(height, width)))


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``image`` (uint8 H×W×C, C = 1 or 3) with ``corruption`` at ``severity`` (1–5), drawn with
    ``seed``; same shape and dtype. Grayscale and small images as the module docstring says."""
    height, width, channels = image.shape
    k = scale_factor(height, width)
    rgb = np.repeat(image, 3, axis=2) if channels == 1 else image
    if k > 1:
        rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
    np.random.seed(seed)
    extra = {"seed": seed} if corruption in SEEDED else {}
    out = _library().corrupt(rgb, severity=severity, corruption_name=corruption, **extra).astype(np.float64)
    if k > 1:
        out = out.reshape(height, k, width, k, 3).mean(axis=(1, 3))
    if channels == 1:
        out = (out @ LUMA)[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _corrupt_chunk(task: tuple[np.ndarray, int, str, int, int]) -> np.ndarray:
    """Worker: corrupt a chunk of images whose first one has index ``start`` in the split
    (numpy's global random state, which the corruptions draw from, is restored afterwards)."""
    images, start, corruption, severity, seed = task
    state = np.random.get_state()
    try:
        return np.stack([corrupt_image(img, corruption, severity, image_seed(seed, corruption, severity, start + i))
                         for i, img in enumerate(images)])
    finally:
        np.random.set_state(state)


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Every image of ``images`` (uint8 N×H×W×C) corrupted, in this process."""
    return _corrupt_chunk((images, 0, corruption, severity, seed))


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of a split's images and labels (shapes and dtypes included)."""
    digest = hashlib.sha256()
    for a in (x, y):
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CorruptionCache:
    """Where the corrupted copies of one data set's test split live, and what makes them valid.

    dataset: the data set's name as given (``fashion-mnist``, ``imagefolder:PATH``); root: its
    folder (None: the default); data_sha256: :func:`fingerprint` of the test split."""

    folder: Path
    dataset: str
    root: Optional[str]
    data_sha256: str

    @classmethod
    def for_dataset(cls, cache_dir: str | os.PathLike, dataset: str, root: Optional[str],
                    x: np.ndarray, y: np.ndarray) -> "CorruptionCache":
        """The cache of ``dataset`` in ``cache_dir``: one folder per (name, root), named after the
        name (made safe for a file system) and a hash of both."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-.")[:40] or "dataset"
        digest = hashlib.sha256(json.dumps([dataset, root]).encode()).hexdigest()[:10]
        return cls(Path(cache_dir).expanduser() / f"{slug}-{digest}", dataset, root, fingerprint(x, y))

    def path(self, corruption: str, severity: int, seed: int) -> Path:
        return self.folder / corruption / f"severity{severity}-seed{seed}.npy"

    def key(self, corruption: str, severity: int, seed: int) -> dict[str, Any]:
        return {"dataset": self.dataset, "root": self.root, "data_sha256": self.data_sha256,
                "corruption": corruption, "severity": severity, "seed": seed,
                "package": f"{PACKAGE} {library_version()}", "method": METHOD}

    def load(self, corruption: str, severity: int, seed: int, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """The cached images (memory-mapped, read-only) if the file is there, of ``shape``, uint8,
        and its key is the wanted one; else None."""
        path = self.path(corruption, severity, seed)
        try:
            stored = json.loads(path.with_suffix(".json").read_text())
            if stored != self.key(corruption, severity, seed):
                return None
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        return images if images.shape == tuple(shape) and images.dtype == np.uint8 else None

    def save(self, corruption: str, severity: int, seed: int, images: np.ndarray) -> None:
        """Write the images, then their key, each atomically (a crash in between leaves the old
        key, which no longer matches, so the images are made again)."""
        path = self.path(corruption, severity, seed)
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, images, allow_pickle=False)
        with atomic_write(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(self.key(corruption, severity, seed), indent=1) + "\n")


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """(start, stop) ranges: about 8 per worker, so the progress bar moves and the load balances."""
    size = max(1, min(256, math.ceil(n / max(1, 8 * workers))))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def corrupt_cells(images: np.ndarray, cells: Sequence[tuple[str, int]], seed: int, *, start: int = 0,
                  workers: int = 0, progress: Optional[ProgressFn] = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """Each of ``cells`` ((corruption, severity) pairs) applied to ``images`` (uint8 N×H×W×C, whose
    first is image ``start`` of the test split: each image keeps its own seed), yielded as
    (corruption, severity, corrupted images) in the order of ``cells``, each as soon as it is done.
    ``workers`` processes share the work (0: this process); they are spawned, so they share no
    threads or CUDA state with the caller (a script that calls this with workers must do so under
    ``if __name__ == "__main__":``). Reports the images done as task ``corrupt``."""
    if not cells:
        return
    if not len(images):  # a share of no images: every cell, empty
        yield from ((c, s, np.array(images[:0])) for c, s in cells)
        return
    spans = _chunks(len(images), workers)
    tasks = [(images[a:b], start + a, c, s, seed) for c, s in cells for a, b in spans]
    total, done, parts = len(cells) * len(images), 0, []
    report(progress, "corrupt", 0, total, cell=f"{cells[0][0]}/{cells[0][1]}")
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 0 else None
    results = pool.map(_corrupt_chunk, tasks) if pool is not None else map(_corrupt_chunk, tasks)
    try:
        for (images_part, _, corruption, severity, _), part in zip(tasks, results):
            parts.append(part)
            done += len(images_part)
            report(progress, "corrupt", done, total, cell=f"{corruption}/{severity}")
            if len(parts) == len(spans):
                yield corruption, severity, np.concatenate(parts)
                parts = []
    except BrokenProcessPool:
        raise UserError("the corruption worker processes stopped before finishing (killed, out of memory, or "
                        "started from a script without `if __name__ == \"__main__\":`); the cells made so far "
                        "are cached — rerun, or use --workers 0.") from None
    finally:
        if pool is not None:  # after an error or an interrupt: drop the queued chunks, do not wait for them
            pool.shutdown(wait=False, cancel_futures=True)
