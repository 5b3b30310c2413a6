"""Data files from strangers never run code: CIFAR's pickled batches are read by a restricted
unpickler (also under the user's own --data-root), and what a checkpoint says about its data is
data, not instructions. Each payload would create a marker file; the marker must never appear."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_CNN, invoke
from alignsam_diag.data import DataSpec, load_data
from alignsam_diag.errors import UserError
from alignsam_diag.models import build_model
from alignsam_diag.models.checkpoint import save_checkpoint


class Payload:
    """Unpickling this calls os.system(touch MARKER)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cifar10_tree(root: Path, marker: Path, poisoned: str = "data_batch_1") -> None:
    """torchvision's CIFAR-10 layout with one poisoned batch; the others are genuine."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
        if name == poisoned:
            entry["labels"] = Payload(marker)
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)


def test_poisoned_cifar_batch_is_refused_under_the_users_own_root(tmp_path):
    marker = tmp_path / "MARKER"
    _cifar10_tree(tmp_path, marker)
    with pytest.raises(UserError, match="data_batch_1: not a CIFAR batch .*refused posix.system"):
        load_data(DataSpec("cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_genuine_cifar_batches_still_load(tmp_path):
    _cifar10_tree(tmp_path, tmp_path / "unused", poisoned="none")
    data = load_data(DataSpec("cifar10", root=str(tmp_path)))
    assert data.train.x.shape == (10, 3, 32, 32) and data.train.y.tolist() == [0, 1] * 5


@pytest.fixture
def bundle(tmp_path) -> tuple[Path, Path]:
    """A stranger's 'model bundle': a checkpoint that loads with weights_only=True and whose
    stored data spec points at a poisoned CIFAR tree beside it."""
    marker = tmp_path / "MARKER"
    _cifar10_tree(tmp_path, marker)
    torch.manual_seed(0)
    spec = {**SMALL_CNN.to_dict(), "num_classes": 10, "in_channels": 3, "image_size": 32}
    save_checkpoint(tmp_path / "model.pt", {"state_dict": build_model(type(SMALL_CNN)(**spec)).state_dict(),
                                            "model": spec, "data": {"name": "cifar10", "root": str(tmp_path),
                                                                    "download": True}})
    return tmp_path / "model.pt", marker


@pytest.mark.parametrize("command", ["eigs", "landscape"])
def test_stored_data_root_never_unpickles_a_payload(bundle, command, tmp_path):
    checkpoint, marker = bundle
    result = invoke(command, checkpoint, "--device", "cpu", "--samples", "4", "--out", tmp_path / "out.h5")
    assert result.exit_code == 2 and "refused posix.system" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.h5").exists()


def test_stored_download_flag_is_never_taken_from_a_file():
    spec = DataSpec.from_dict({"name": "cifar10", "root": "/somewhere", "download": True})
    assert spec.download is False and "download" not in DataSpec("cifar10", download=True).to_dict()


@pytest.mark.parametrize("stored", [{"name": ["cifar10"]}, {"name": "digits", "seed": "0"},
                                    {"name": "digits", "root": {"path": "/"}}, {"name": "digits", "subset": 1.5}])
def test_malformed_stored_data_spec_is_a_clear_error(stored):
    with pytest.raises(UserError, match="the stored data spec has invalid"):
        DataSpec.from_dict(stored)
