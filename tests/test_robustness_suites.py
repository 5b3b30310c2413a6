"""Robustness suites on tiny files written in the real layouts: ImageNet-C (both layouts, both
preprocessings) scored by a model that reads the true class from the pixels (1.0) and by a
constant model (its score from the class counts), ImageNet-R's 200-class restriction, CIFAR-C's
rows by severity (memory-mapped), and the corrupt suite: grayscale and small images handled as
documented, generated in worker processes, cached, the cache reused and invalidated."""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alignsam_diag.analysis.robustness import ModelSource, RobustnessOptions, evaluate_robustness, score_cell
from alignsam_diag.data import corrupt as corrupt_module
from alignsam_diag.data.corrupt import corrupt_image
from alignsam_diag.data.robustness_constants import GROUP_OF, IMAGENET_R_INDICES, IMAGENET_R_WNIDS
from alignsam_diag.data.sources import load_source
from alignsam_diag.data.suite_types import Cell, Normalisation, SuiteRequest
from alignsam_diag.data.suites import open_suite
from alignsam_diag.errors import UserError
from alignsam_diag.models import ModelSpec
from alignsam_diag.models.checkpoint import LoadedCheckpoint

CLASSES = [f"n{i:08d}" for i in range(7)]
COUNTS = [1, 2, 3, 1, 2, 3, 1]  # images per class and cell: 13, of which 1 of class 0 and 9 of classes 0-4
CELLS = [("gaussian_noise", 1), ("gaussian_noise", 3), ("fog", 1), ("fog", 3)]  # in the canonical order
BORDER = 8  # white frame: kept by center-crop-224, cut away by resize256-crop224


def level(k: int) -> int:
    return 20 + 30 * k


def write_jpeg(path: Path, grey: int, size: int = 224) -> None:
    pixels = np.full((size, size, 3), grey, np.uint8)
    pixels[:BORDER], pixels[-BORDER:], pixels[:, :BORDER], pixels[:, -BORDER:] = 255, 255, 255, 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


class Decoder(nn.Module):
    """Knows the answer: class k is the grey level 20 + 30k at the centre of the image; puts the
    highest score on ``target[k]`` of ``outputs`` (and, if ``decoy`` is given, a higher one there)."""

    def __init__(self, outputs: int = 7, target=None, decoy=None):
        super().__init__()
        self.outputs, self.target, self.decoy = outputs, list(target or range(outputs)), decoy

    def forward(self, x):
        k = ((x[:, 0, 100:124, 100:124].mean((1, 2)) * 255 - 20) / 30).round().long()
        logits = torch.zeros(len(x), self.outputs)
        logits[torch.arange(len(x)), torch.tensor(self.target)[k]] = 50.0
        if self.decoy is not None:
            logits[:, self.decoy] = 100.0
        return logits


class Constant(nn.Module):
    def forward(self, x):
        return torch.arange(7, 0, -1).float().expand(len(x), 7)  # always class 0 first, then 1, 2, 3, 4


class Given(ModelSource):
    """The model source of a test: this model, whatever the path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def load(self, path, channels, image_size, device):
        return LoadedCheckpoint(self.model, ModelSpec("given", 7, 3, 224), None)


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory):
    """The same ImageNet-C tree twice: flat and with the group level."""
    roots = {}
    for grouped in (False, True):
        root = tmp_path_factory.mktemp("imagenet-c")
        for corruption, severity in CELLS:
            base = root / GROUP_OF[corruption] / corruption if grouped else root / corruption
            for k, wnid in enumerate(CLASSES):
                for i in range(COUNTS[k]):
                    write_jpeg(base / str(severity) / wnid / f"ILSVRC2012_val_{k:04d}{i:04d}.JPEG", level(k))
        roots[grouped] = root
    return roots


def run(tmp_path, model, request, **options):
    """``model`` on ``request``'s suite, into a new results file."""
    out = tmp_path / f"results-{len(list(tmp_path.glob('results-*.h5')))}.h5"
    return evaluate_robustness(out, ["net.pt"], [request], source=Given(model),
                               options=RobustnessOptions(normalise="none", batch_size=5, **options))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("preprocess", ["center-crop-224", "resize256-crop224"])
def test_imagenet_c_oracle_scores_1_and_a_constant_model_its_class_share(tmp_path, imagenet_c, grouped, preprocess):
    request = SuiteRequest(name="imagenet-c", root=str(imagenet_c[grouped]), preprocess=preprocess)
    (oracle,) = run(tmp_path, Decoder(), request)
    assert [(c.corruption, c.severity) for c in oracle.cells] == CELLS
    assert all(c.samples == 13 for c in oracle.cells) and oracle.top1 == 1.0 and oracle.top5 == 1.0
    assert oracle.clean is None and oracle.settings["preprocess"] == preprocess and "mCE is not defined" in oracle.note
    (constant,) = run(tmp_path, Constant(), request)
    assert all(c.top1 == COUNTS[0] / 13 and c.top5 == sum(COUNTS[:5]) / 13 for c in constant.cells)
    assert constant.top1 == pytest.approx(1 / 13) and constant.top5 == pytest.approx(9 / 13)
    # the preprocessing is the one asked for: the white frame is kept by the centre crop only
    images, _ = next(open_suite(request).batches(Cell("fog", 3), 13))
    assert images.shape == (13, 3, 224, 224) and images.dtype == torch.uint8
    assert (images[:, :, 0, :].float().mean() > 250) == (preprocess == "center-crop-224")


def test_imagenet_c_cells_default_to_the_benchmark_ones_on_disk_and_explicit_ones_must_be_there(imagenet_c):
    root = str(imagenet_c[False])
    assert open_suite(SuiteRequest(name="imagenet-c", root=root)).cells == [Cell(c, s) for c, s in CELLS]
    three = open_suite(SuiteRequest(name="imagenet-c", root=root, severities=(3,)))
    assert three.cells == [Cell("gaussian_noise", 3), Cell("fog", 3)]
    with pytest.raises(UserError, match="no images for contrast/1"):
        open_suite(SuiteRequest(name="imagenet-c", root=root, corruptions=("contrast",)))
    with pytest.raises(UserError, match="no images for gaussian_noise/2, fog/2;"):
        open_suite(SuiteRequest(name="imagenet-c", root=root, severities=(2,)))


def test_imagenet_r_restricts_a_1000_class_model_to_its_200_classes(tmp_path):
    positions = [199, 5, 50]  # places among the 200 sorted wnids of the test's three classes
    root = tmp_path / "imagenet-r"
    counts = [2, 1, 3]
    for k, p in enumerate(positions):
        for i in range(counts[k]):
            write_jpeg(root / IMAGENET_R_WNIDS[p] / f"art_{i}.jpg", level(k), size=300)
    request = SuiteRequest(name="imagenet-r", root=str(root))
    suite = open_suite(request)
    full = Decoder(1000, [IMAGENET_R_INDICES[p] for p in positions], decoy=0)  # index 0 is not an R class
    assert 0 not in IMAGENET_R_INDICES
    (masked,) = run(tmp_path, full, request)
    assert masked.top1 == 1.0 and masked.cells[0].samples == 6 and masked.cells[0].corruption == "renditions"
    # the decoy would win on the whole 1000 outputs: the restriction is what makes it right
    everything = score_cell(full, suite.batches(Cell("renditions"), 4), device=torch.device("cpu"),
                            normalisation=Normalisation())
    assert everything[:1] == (0,)
    (own,) = run(tmp_path, Decoder(200, positions), request)
    assert own.top1 == 1.0
    with pytest.raises(UserError, match="10 outputs; imagenet-r takes"):
        run(tmp_path, Decoder(10), request)
    (root / "n99999999").mkdir()
    with pytest.raises(UserError, match="n99999999 is not among the 200 ImageNet-R classes"):
        open_suite(request)


def test_an_unreadable_image_is_one_line_also_when_a_worker_decodes_it(tmp_path):
    for k in range(2):
        write_jpeg(tmp_path / "val" / CLASSES[k] / "a.JPEG", level(k), size=240)
    broken = tmp_path / "val" / CLASSES[1] / "b.JPEG"
    broken.write_bytes(b"not a JPEG")
    suite = open_suite(SuiteRequest(name="imagenet", root=str(tmp_path / "val")))
    assert suite.cells == [Cell("clean")] and suite.size(Cell("clean")) == 3 and suite.num_classes == 2
    for workers in (0, 1):
        with pytest.raises(UserError) as caught:
            list(suite.batches(Cell("clean"), 2, workers))
        assert str(caught.value).startswith(f"{broken}: not a readable image") and "\n" not in str(caught.value)


def _cifar_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": list(map(int, y))}, fh)


def test_cifar_c_rows_slice_by_severity_from_memory_maps_and_the_clean_split_beside(tmp_path):
    n = 4
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    images = np.zeros((5 * n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(5 * n)  # each image carries its row
    np.save(root / "gaussian_noise.npy", images)
    np.save(root / "labels.npy", np.arange(5 * n) % 10)
    suite = open_suite(SuiteRequest(name="cifar10-c", root=str(root)))
    assert suite.cells == [Cell("gaussian_noise", s) for s in range(1, 6)] and suite.image_size == 32
    for s in range(1, 6):
        cell = Cell("gaussian_noise", s)
        assert isinstance(suite.arrays[cell][0], np.memmap)
        rows = torch.cat([x[:, 0, 0, 0] for x, _ in suite.batches(cell, 3)])
        labels = torch.cat([y for _, y in suite.batches(cell, 3)])
        assert rows.tolist() == list(range((s - 1) * n, s * n)) and labels.tolist() == [r % 10 for r in rows.tolist()]
    # torchvision's CIFAR-10 folder beside it gives the clean cell
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _cifar_batch(folder / name, rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 3))
    with_clean = open_suite(SuiteRequest(name="cifar10-c", root=str(root), corruptions=("gaussian_noise",)))
    clean = load_source("cifar10", str(tmp_path), False).test
    assert with_clean.cells[0] == Cell("clean") and len(with_clean.cells) == 6
    x, y = next(with_clean.batches(Cell("clean"), 10))
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), clean.x) and y.tolist() == clean.y.tolist()


def test_cifar_c_files_are_never_unpickled(tmp_path):
    np.save(tmp_path / "labels.npy", np.arange(10) % 10)
    np.save(tmp_path / "fog.npy", np.array([{"payload": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="fog.npy: not a readable .npy array"):
        open_suite(SuiteRequest(name="cifar10-c", root=str(tmp_path)))


@pytest.fixture
def fake_library(monkeypatch):
    """``imagecorruptions.corrupt`` replaced by a known change: +10 on the red channel (shapes recorded)."""
    import imagecorruptions

    seen = []

    def fake(image, severity, corruption_name, **kwargs):
        seen.append(image.shape)
        out = image.astype(np.int64)
        out[..., 0] += 10
        return np.clip(out, 0, 255).astype(np.uint8)

    monkeypatch.setattr(imagecorruptions, "corrupt", fake)
    return seen


@pytest.mark.parametrize("shape, corrupted_shape", [((8, 8, 1), (32, 32, 3)), ((28, 28, 1), (56, 56, 3)),
                                                    ((32, 32, 3), (32, 32, 3))])
def test_small_and_grayscale_images_are_enlarged_and_brought_back_as_documented(fake_library, shape, corrupted_shape):
    image = np.random.default_rng(1).integers(0, 240, shape, dtype=np.uint8)
    out = corrupt_image(image, "fog", 3, seed=0)
    assert fake_library == [corrupted_shape] and out.shape == shape and out.dtype == np.uint8
    if shape[-1] == 1:  # luma of (g + 10, g, g): g + 0.299 · 10, rounded
        assert np.array_equal(out, np.rint(image + 2.99).astype(np.uint8))
    else:
        assert np.array_equal(out[..., 0], image[..., 0] + 10) and np.array_equal(out[..., 1:], image[..., 1:])


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_corrupt_suite_on_grayscale_fashion_mnist_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 5)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    request = SuiteRequest(name="corrupt", dataset="fashion-mnist", root=str(tmp_path), corruptions=("contrast",),
                           severities=(5,), cache_dir=str(tmp_path / "cache"))
    suite = open_suite(request)
    suite.prepare(suite.cells)
    (clean, _), (corrupted, labels) = (next(suite.batches(cell, 10)) for cell in suite.cells)
    assert suite.channels == 1 and suite.image_size == 28 and corrupted.shape == clean.shape == (5, 1, 28, 28)
    assert suite.normalisation == Normalisation((0.2860,), (0.3530,))
    assert labels.tolist() == load_source("fashion-mnist", str(tmp_path), False).test.y.tolist()
    assert (corrupted.float() - clean.float()).abs().mean() > 10  # severity-5 contrast squeezes the pixels together


def test_digits_corruptions_made_by_workers_grow_with_severity_and_are_cached(tmp_path):
    request = SuiteRequest(name="corrupt", dataset="digits", corruptions=("gaussian_noise",), severities=(1, 3, 5),
                           cache_dir=str(tmp_path / "cache"))
    suite = open_suite(request)
    suite.prepare(suite.cells, workers=2)
    assert suite.generated == 3 and suite.channels == 1 and suite.image_size == 8
    clean = suite.arrays[Cell("clean")][0].astype(float)
    change = [np.abs(suite.arrays[Cell("gaussian_noise", s)][0] - clean).mean() for s in (1, 3, 5)]
    assert 0 < change[0] < change[1] < change[2]
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 3
    again = open_suite(request)  # the second time: read from the cache, nothing generated or written
    again.prepare(again.cells)
    assert again.generated == 0 and [f.stat().st_mtime_ns for f in files] == stamps
    # the same images in this process: each image's seed does not depend on how the work is split
    alone = open_suite(SuiteRequest(name="corrupt", dataset="digits", corruptions=("gaussian_noise",), severities=(3,),
                                    cache_dir=str(tmp_path / "other")))
    alone.prepare(alone.cells)
    assert np.array_equal(alone.arrays[Cell("gaussian_noise", 3)][0], again.arrays[Cell("gaussian_noise", 3)][0])


def test_the_cache_is_invalidated_when_its_key_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(2):
                (tmp_path / "images" / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "images" / split / cls / f"{i}.png")
    request = SuiteRequest(name="corrupt", dataset=f"imagefolder:{tmp_path / 'images'}", corruptions=("fog",),
                           severities=(2,), cache_dir=str(tmp_path / "cache"))

    def made() -> tuple[int, np.ndarray]:
        suite = open_suite(request)
        suite.prepare(suite.cells)
        return suite.generated, np.array(suite.arrays[Cell("fog", 2)][0])

    first = made()
    assert first[0] == 1 and made()[0] == 0 and first[1].shape == (4, 32, 32, 3)
    os.utime(tmp_path / "images" / "val" / "a" / "0.png")  # touched, not changed: still valid
    assert made()[0] == 0
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "val" / "a" / "0.png")
    changed = made()  # other test images: other corruptions
    assert changed[0] == 1 and not np.array_equal(changed[1][0], first[1][0])
    assert np.array_equal(changed[1][1:], first[1][1:])  # the other images are the same images with the same seeds
    monkeypatch.setattr(corrupt_module, "library_version", lambda: "9.9.9")
    assert made()[0] == 1
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # one file per (data set, corruption, severity, seed)
