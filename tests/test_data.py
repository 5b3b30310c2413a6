"""Data sets by name, subsets, label noise, augmentation — on the real data sets here and on
tiny files written in the exact on-disk formats of the others."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from alignsam_diag.data import DataSpec, fixed_batches, flip_labels, load_data, sample_subset, subset_indices
from alignsam_diag.data.augment import pad_crop_flip
from alignsam_diag.errors import UserError


def test_digits_split_is_fixed_and_complete():
    a = load_data(DataSpec("digits"))
    b = load_data(DataSpec("digits", seed=7))
    assert a.train.x.shape == (1437, 1, 8, 8) and a.test.x.shape == (360, 1, 8, 8)
    assert torch.equal(a.test.y, b.test.y)  # the test split does not depend on the run seed
    assert a.num_classes == 10 and a.in_channels == 1 and a.image_size == 8


def test_fashion_mnist_real_files():
    d = load_data(DataSpec("fashion-mnist"))
    assert d.train.x.shape == (60000, 1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert abs(d.train.x.mean().item()) < 0.01 and abs(d.train.x.std().item() - 1) < 0.01
    assert torch.bincount(d.train.y).tolist() == [6000] * 10


def test_fashion_mnist_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_data(DataSpec("fashion-mnist", root=str(tmp_path)))


def test_label_noise_flips_exactly_and_never_to_same_class():
    y = np.random.default_rng(0).integers(0, 10, 5000)
    noisy = flip_labels(y, 0.4, 10, seed=3)
    assert (noisy != y).sum() == 2000
    assert np.array_equal(noisy, flip_labels(y, 0.4, 10, seed=3))
    assert not np.array_equal(noisy, flip_labels(y, 0.4, 10, seed=4))
    # each flipped label is uniform over the 9 other classes
    shifts = ((noisy - y) % 10)[noisy != y]
    counts = np.bincount(shifts, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 150


def test_label_noise_keeps_clean_labels_recoverable():
    d = load_data(DataSpec("digits", label_noise=0.25, seed=1))
    assert d.train.noisy.sum().item() == round(0.25 * 1437)
    assert torch.equal(d.train.clean_y, load_data(DataSpec("digits")).train.y)
    assert torch.equal(d.test.y, d.test.clean_y)


def test_subset_is_seeded_and_noise_applies_after_it():
    d = load_data(DataSpec("digits", subset=100, label_noise=0.1, seed=2))
    full = load_data(DataSpec("digits"))
    keep = subset_indices(1437, 100, 2)
    assert torch.equal(d.train.clean_y, full.train.y[keep])
    assert d.train.noisy.sum().item() == 10
    with pytest.raises(UserError, match="subset = 5000"):
        load_data(DataSpec("digits", subset=5000))


def test_sample_subset_and_fixed_batches():
    d = load_data(DataSpec("digits")).train
    s = sample_subset(d, 100, seed=0)
    assert len(s) == 100 and torch.equal(s.y, sample_subset(d, 100, seed=0).y)
    batches = fixed_batches(s, 32)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in batches]), s.x)


def _write_cifar10(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    return entry


def test_cifar10_torchvision_format(tmp_path):
    last = _write_cifar10(tmp_path)
    d = load_data(DataSpec("cifar10", root=str(tmp_path), normalise=False))
    assert d.train.x.shape == (20, 3, 32, 32) and d.test.x.shape == (4, 3, 32, 32) and d.augment
    # CHW layout: the first 1024 bytes of a row are the red plane
    red = torch.tensor(last["data"][0, :1024].reshape(32, 32), dtype=torch.float32) / 255
    assert torch.allclose(d.test.x[0, 0], red)


def test_cifar100_torchvision_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": list(range(n))}, fh)
    d = load_data(DataSpec("cifar100", root=str(tmp_path)))
    assert d.num_classes == 100 and len(d.train) == 6


def test_imagefolder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = load_data(DataSpec(f"imagefolder:{tmp_path}@16"))
    assert d.train.x.shape == (4, 3, 16, 16) and d.num_classes == 2
    assert d.train.y.tolist() == [0, 0, 1, 1]


def test_npz_used_exactly_as_given(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(DataSpec(f"npz:{tmp_path / 'd.npz'}"))
    assert torch.equal(d.train.x, torch.from_numpy(x)) and d.train.y.tolist() == y.tolist()
    assert d.num_classes == 3 and not d.augment


def test_unknown_dataset_names_the_choices():
    with pytest.raises(UserError, match="digits"):
        load_data(DataSpec("mnist-typo"))


def test_pad_crop_flip_matches_a_per_image_reference():
    x = torch.randn(6, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = pad_crop_flip(x, gen, pad=2)
    ref_gen = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (6,), generator=ref_gen)
    dx = torch.randint(0, 5, (6,), generator=ref_gen)
    flip = torch.rand(6, generator=ref_gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        expected = crop.flip(-1) if flip[i] else crop
        assert torch.equal(out[i], expected)
