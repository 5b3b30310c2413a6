"""The ImageFolder suites, ``imagenet``, ``imagenet-c`` and ``imagenet-r`` (layouts: :mod:`.suites`).

Images are decoded with PIL (as RGB) and preprocessed as the reference evaluation scripts do,
with torchvision's ``Resize(256)`` (shorter side, bilinear) and ``CenterCrop(224)``; a
``torch.utils.data.DataLoader`` with ``workers`` processes decodes them in parallel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..errors import UserError
from .robustness_constants import (ALL_CORRUPTIONS, GROUP_OF, IMAGENET_MEAN, IMAGENET_R_INDICES, IMAGENET_R_WNIDS,
                                   IMAGENET_STD)
from .suite_types import CLEAN, RENDITIONS, SEVERITIES, Batch, Cell, Normalisation, Suite, SuiteRequest, chosen_cells

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}  # torchvision's
CROP = 224
RESIZE = 256


def preprocess_image(image: Any, how: str) -> Any:
    """A PIL image → the 224×224 PIL image the model sees: ``resize256-crop224`` (shorter side to
    256, then the central 224×224) or ``center-crop-224`` (the central 224×224 only)."""
    from torchvision.transforms import functional

    if how == "resize256-crop224":
        image = functional.resize(image, RESIZE)
    return functional.center_crop(image, CROP)


class ImageFiles(torch.utils.data.Dataset):
    """Image files and their labels; item i is (uint8 3×224×224 tensor, label)."""

    def __init__(self, files: list[str], labels: np.ndarray, preprocess: str) -> None:
        self.files, self.labels, self.preprocess = files, labels, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                image = preprocess_image(image.convert("RGB"), self.preprocess)
        except OSError as err:
            raise UserError(f"{self.files[i]}: not a readable image ({err}).") from None
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return pixels, int(self.labels[i])


def class_folders(path: Path) -> list[str]:
    """The class folder names under ``path``, sorted (torchvision's ImageFolder order)."""
    try:
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError as err:
        raise UserError(f"{path}: cannot list the class folders ({err.strerror}).") from None


def _images_of(folder: Path) -> list[str]:
    return sorted(entry.path for entry in os.scandir(folder)
                  if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)


@dataclass
class FolderSuite(Suite):
    """Cells that are folders of class folders. ``labels``: class folder name → label; ``r_classes``:
    ImageNet-R (labels are places among the 200 wnids; 1000-class models are restricted to them)."""

    key: str
    settings: dict[str, Any]
    cells: list[Cell]
    num_classes: int
    folders: dict[Cell, Path]
    labels: dict[str, int]
    preprocess: str
    r_classes: bool = False
    channels: int = 3
    image_size: int = CROP
    normalisation: Optional[Normalisation] = Normalisation(IMAGENET_MEAN, IMAGENET_STD)
    _files: dict[Cell, tuple[list[str], np.ndarray]] = field(default_factory=dict)

    def files(self, cell: Cell) -> tuple[list[str], np.ndarray]:
        """The image paths of ``cell`` and their labels (int64), class by class; its class folders
        must be the suite's."""
        if cell not in self._files:
            folder = self.folders[cell]
            classes = class_folders(folder)
            if set(classes) != set(self.labels):
                odd = sorted(set(classes) ^ set(self.labels))
                raise UserError(f"{folder}: its class folders differ from the other cells' ({', '.join(odd[:4])}); "
                                "every cell needs the same classes.")
            files, labels = [], []
            for name in classes:
                images = _images_of(folder / name)
                files += images
                labels += [self.labels[name]] * len(images)
            if not files:
                raise UserError(f"{folder}: no image files in its class folders.")
            self._files[cell] = files, np.asarray(labels, dtype=np.int64)
        return self._files[cell]

    def size(self, cell: Cell) -> int:
        return len(self.files(cell)[0])

    def batches(self, cell: Cell, batch_size: int, workers: int = 0, span: Optional[range] = None) -> Iterator[Batch]:
        files, labels = self.files(cell)
        if span is not None:
            files, labels = files[span.start:span.stop], labels[span.start:span.stop]
        loader = torch.utils.data.DataLoader(ImageFiles(files, labels, self.preprocess), batch_size=batch_size,
                                             num_workers=workers, shuffle=False)
        try:
            yield from loader
        except UserError as err:  # from a worker, raised again with the worker's traceback around its message
            lines = str(err).strip().splitlines()
            raise UserError(lines[-1].partition("UserError: ")[2] or lines[0]) from None

    def output_indices(self, outputs: int, name: str) -> Optional[list[int]]:
        if not self.r_classes:
            return super().output_indices(outputs, name)
        if outputs == len(IMAGENET_R_WNIDS):
            return None
        if outputs == 1000:
            return list(IMAGENET_R_INDICES)
        raise UserError(f"{name}: the model has {outputs} outputs; imagenet-r takes a 1000-class ImageNet model "
                        "(restricted to the 200 classes) or a 200-class one.")


def _require_classes(root: Path, what: str) -> list[str]:
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; --data-root must be the folder that holds {what}.")
    classes = class_folders(root)
    if not classes:
        raise UserError(f"{root}: no class folders; {what} is <root>/<wnid>/<image files>.")
    return classes


def imagenet_c_folders(root: Path) -> dict[Cell, Path]:
    """Each (corruption, severity) folder of an ImageNet-C tree, with or without the group level
    (``<root>/<corruption>/<s>`` is taken where both are there)."""
    found: dict[Cell, Path] = {}
    for corruption in ALL_CORRUPTIONS:
        for base in (root / corruption, root / GROUP_OF[corruption] / corruption):
            for s in SEVERITIES:
                if (base / str(s)).is_dir():
                    found.setdefault(Cell(corruption, s), base / str(s))
    return found


def open_folder_suite(request: SuiteRequest) -> FolderSuite:
    """``imagenet``, ``imagenet-c`` or ``imagenet-r`` under ``request.root``."""
    root = Path(request.root or "").expanduser()
    settings: dict[str, Any] = {"suite": request.name, "root": str(root.resolve())}
    if request.name == "imagenet-c":
        if not root.is_dir():
            raise UserError(f"{root}: no such folder; --data-root must be the ImageNet-C folder.")
        folders = imagenet_c_folders(root)
        if not folders:
            raise UserError(f"{root}: no ImageNet-C corruption folders (<root>/<corruption>/<severity>/<wnid>/, or "
                            "<root>/<group>/<corruption>/... with groups noise, blur, weather, digital, extra).")
        cells = chosen_cells(request, set(folders), str(root))
        classes = _require_classes(folders[cells[0]], "a severity folder")
        settings["preprocess"] = request.preprocess
        return FolderSuite(request.name, settings, cells, len(classes), folders,
                           {name: i for i, name in enumerate(classes)}, request.preprocess)
    classes = _require_classes(root, "the class folders")
    cell = Cell(CLEAN if request.name == "imagenet" else RENDITIONS)
    settings["preprocess"] = "resize256-crop224"
    if request.name == "imagenet":
        return FolderSuite(request.name, settings, [cell], len(classes), {cell: root},
                           {name: i for i, name in enumerate(classes)}, "resize256-crop224")
    strangers = [name for name in classes if name not in IMAGENET_R_WNIDS]
    if strangers:
        raise UserError(f"{root}: {', '.join(strangers[:4])} {'is' if len(strangers) == 1 else 'are'} not among the "
                        "200 ImageNet-R classes (wnids such as n01443537).")
    return FolderSuite(request.name, settings, [cell], len(IMAGENET_R_WNIDS), {cell: root},
                       {name: IMAGENET_R_WNIDS.index(name) for name in classes}, "resize256-crop224", r_classes=True)
