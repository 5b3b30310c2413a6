"""What every robustness suite shares: cells, normalisation, the request that names a suite, the
base class the suites implement, and the parsing of ``--corruptions`` / ``--severities``
(the suites themselves: :mod:`.suites`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ..errors import OptionError, UserError
from ..progress import ProgressFn
from .robustness_constants import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, GROUPS

if TYPE_CHECKING:
    import torch

SUITES = ("imagenet", "imagenet-c", "imagenet-r", "cifar10-c", "cifar100-c", "corrupt")
PREPROCESS = ("center-crop-224", "resize256-crop224")
CLEAN = "clean"
RENDITIONS = "renditions"
SEVERITIES = (1, 2, 3, 4, 5)
Batch = tuple["torch.Tensor", "torch.Tensor"]  # (uint8 N×C×H×W images, int64 N labels)


@dataclass(frozen=True, order=True)
class Cell:
    """One evaluation unit: a corruption at a severity (1–5), or ``clean`` / ``renditions`` at 0."""

    corruption: str
    severity: int = 0

    def __str__(self) -> str:
        return f"{self.corruption}/{self.severity}" if self.severity else self.corruption


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(x − mean) / std`` of [0, 1] pixels; empty tuples: none."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def parse_corruptions(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """``--corruptions``: names and the words ``benchmark`` (the 15), ``extra`` (the 4), ``all``
    (19) and the groups noise, blur, weather, digital, comma-separated, in the canonical order;
    None (not given) stays None: the suite's default (the benchmark corruptions)."""
    if text is None:
        return None
    words = {"benchmark": BENCHMARK_CORRUPTIONS, "all": ALL_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, **GROUPS}
    chosen: set[str] = set()
    for word in (w.strip() for w in text.split(",")):
        if word not in words and word not in ALL_CORRUPTIONS:
            raise OptionError("corruptions", text, f"{word!r} is not a corruption; choose names among "
                              f"{', '.join(ALL_CORRUPTIONS)} or the words {', '.join(words)}.")
        chosen.update(words.get(word, (word,)))
    return tuple(c for c in ALL_CORRUPTIONS if c in chosen)


def parse_severities(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``--severities``: ``1-5``, ``1,3,5`` or ``2`` (None: the default, 1–5)."""
    if text is None:
        return None
    chosen: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            chosen.update(range(int(low), int(high or low) + 1))
    except ValueError:
        chosen = set()
    if not chosen or not chosen <= set(SEVERITIES):
        raise OptionError("severities", text, "write severities between 1 and 5 as a range or a list, "
                          "e.g. 1-5 or 1,3,5.")
    return tuple(sorted(chosen))


@dataclass(kw_only=True, frozen=True)
class SuiteRequest:
    """What to evaluate: the suite ``name`` (:data:`SUITES`) and its ``root`` folder; the
    corruptions and severities (None: the benchmark corruptions at 1–5, for suites on disk those
    found there); ``preprocess`` (``imagenet-c`` only); for ``corrupt``: the data set (name as
    ``--dataset`` takes it; root = ``root``), the ``seed`` and the ``cache_dir``."""

    name: str
    root: Optional[str] = None
    corruptions: Optional[tuple[str, ...]] = None
    severities: Optional[tuple[int, ...]] = None
    preprocess: str = "center-crop-224"
    dataset: Optional[str] = None
    seed: int = 0
    cache_dir: Optional[str] = None

    def validate(self) -> None:
        if self.name not in SUITES:
            raise OptionError("suite", self.name, f"choose one of {', '.join(SUITES)}.")
        if self.preprocess not in PREPROCESS:
            raise OptionError("preprocess", self.preprocess, f"choose {' or '.join(PREPROCESS)}.")
        if self.name != "corrupt" and self.root is None:
            raise OptionError("suite", self.name, "needs --data-root: the folder that holds it.")
        if not 0 <= self.seed < 2 ** 32:
            raise OptionError("seed", self.seed, "must be a whole number between 0 and 2**32 - 1.")


class Suite:
    """A suite opened for evaluation. ``key``: its name in result files (``corrupt:<data set>``
    for generated corruptions); ``settings``: what its results depend on, recorded with them;
    ``cells``: the cells to evaluate, clean (when there is one) first; ``num_classes``: of its
    labels; ``channels``, ``image_size``: of its images; ``normalisation``: what a model trained
    on these images would use when its checkpoint does not say (None: unknown)."""

    key: str
    settings: dict[str, Any]
    cells: list[Cell]
    num_classes: int
    channels: int
    image_size: int
    normalisation: Optional[Normalisation]

    def size(self, cell: Cell) -> int:
        """Images in ``cell``."""
        raise NotImplementedError

    def batches(self, cell: Cell, batch_size: int, workers: int = 0, span: Optional[range] = None) -> Iterator[Batch]:
        """``cell``'s images, in a fixed order, as (uint8 N×C×H×W, int64 N) batches; ``workers``
        processes decode image files (0: this process); ``span``: only the images of these
        indices (contiguous, step 1; None: all), batched from its start."""
        raise NotImplementedError

    def output_indices(self, outputs: int, name: str) -> Optional[list[int]]:
        """The model outputs that are this suite's classes, in label order (None: all of them, as
        they are), for a model with ``outputs`` outputs; a head that does not fit is a one-line
        :class:`UserError` naming ``name``."""
        if outputs != self.num_classes:
            raise UserError(f"{name}: the model has {outputs} outputs but {self.key} has {self.num_classes} "
                            "classes; evaluate a model of its classes (the whole class tree for image folders).")
        return None

    def prepare(self, cells: list[Cell], workers: int = 0, progress: Optional[ProgressFn] = None) -> None:
        """Make ``cells`` ready to read (generated suites: corrupt and cache them)."""


def chosen_cells(request: SuiteRequest, available: set[Cell], where: str) -> list[Cell]:
    """The corrupted cells of ``request`` among ``available``. By default: the benchmark
    corruptions that are there, at every severity there; cells asked for explicitly (by
    ``corruptions`` or ``severities``) must all be there."""
    there = {cell.corruption for cell in available}
    corruptions = request.corruptions or tuple(c for c in BENCHMARK_CORRUPTIONS if c in there)
    wanted = [Cell(c, s) for c in corruptions for s in request.severities or SEVERITIES]
    missing = [str(cell) for cell in wanted if cell not in available]
    if missing and (request.corruptions is not None or request.severities is not None):
        raise UserError(f"{where}: no images for {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}; "
                        "choose the corruptions and severities it holds (--corruptions, --severities).")
    cells = [cell for cell in wanted if cell in available]
    if not cells:
        raise UserError(f"{where}: holds none of the benchmark corruptions; check the folder, or name the "
                        "corruptions it holds with --corruptions.")
    return cells
