"""Careless input, table-driven: every case ends with exit code 2 and one line on stderr that
says what is wrong and what to do, no traceback, and nothing left behind in the work folder.

Each case is (id, command line, fragment of the expected message). Command lines may name
files of the work folder that :func:`workspace` writes: ``{ckpt}`` (a small digits
checkpoint), ``{dir}`` (the work folder), and the files listed in :data:`FILES`. The cases run
in-process through the CLI runner; the work folder is listed before and after each case."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FASHION_MNIST, SMALL_CNN, assert_one_clear_line, invoke
from alignsam_diag.data import DataSpec
from alignsam_diag.models import build_model
from alignsam_diag.models.checkpoint import save_checkpoint


def _npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


X = np.zeros((6, 1, 8, 8), np.float32)
Y = np.arange(6) % 3

FILES = {
    "str_x.npz": lambda p: _npz(p, x=np.array([["a"] * 4] * 6), y=Y),
    "lengths.npz": lambda p: _npz(p, x=X, y=Y[:4]),
    "negative.npz": lambda p: _npz(p, x=X, y=Y - 1),
    "flat.npz": lambda p: _npz(p, x=np.zeros(6, np.float32), y=Y),
    "empty.npz": lambda p: _npz(p, x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64)),
    "test_x_only.npz": lambda p: _npz(p, x=X, y=Y, x_test=X),
    "float_labels.npz": lambda p: _npz(p, x=X, y=Y + 0.5),
    "complex.npz": lambda p: _npz(p, x=X.astype(np.complex64), y=Y),
    "nan.npz": lambda p: _npz(p, x=np.full_like(X, np.nan), y=Y),
    "objects.npz": lambda p: np.savez(p, x=np.array([object()] * 6, dtype=object), y=Y),
    "single.npz": lambda p: np.save(open(p, "wb"), X),
    "test_shape.npz": lambda p: _npz(p, x=X, y=Y, x_test=np.zeros((6, 1, 4, 4), np.float32), y_test=Y),
    "text.pt": lambda p: p.write_text("these are not the weights you are looking for\n"),
    "history_like.h5": lambda p: _h5(p, {"kind": "history"}),
    "history_ragged.h5": lambda p: _ragged_history(p),
    "landscape_bad_spec.h5": lambda p: _h5(p, {"kind": "landscape", "spec": "{not json", "checkpoints": "[]"}),
    "landscape_no_attrs.h5": lambda p: _h5(p, {"kind": "landscape"}),
    "eigs_no_attrs.h5": lambda p: _eigs_without_attrs(p),
    "images": lambda p: _image_folder(p),
}


def _h5(path: Path, attrs: dict[str, str]) -> None:
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)


def _ragged_history(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "history"
        for name in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds"):
            f[name] = np.zeros(3 if name != "test_acc" else 2)


def _eigs_without_attrs(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "eigs"
        f.create_group("model.pt")


def _image_folder(path: Path) -> None:
    for split in ("train", "val"):
        (path / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / split / "cat" / "0.png")


CASES = [
    # --- names and options
    ("unknown data set", "train --dataset mnist --out {dir}/run", "unknown data set 'mnist'"),
    ("unknown model", "train --arch resnet33 --out {dir}/run", "unknown model 'resnet33'"),
    ("arch kwargs not JSON", "train --arch-kwargs {{oops --out {dir}/run", "--arch-kwargs"),
    ("unknown device", "train --device tpu --out {dir}/run", "--device tpu"),
    ("data root missing", "train --dataset fashion-mnist --data-root /nonexistent --out {dir}/run",
     "Fashion-MNIST not found"),
    ("label noise above 1", "train --label-noise 1.5 --out {dir}/run", "--label-noise 1.5"),
    ("zero epochs", "train --epochs 0 --out {dir}/run", "--epochs"),
    ("flag of another variant", "train --optimizer sam --theta 0.5 --out {dir}/run", "sam does not take --theta"),
    ("fp16", "train --optimizer sam --amp fp16 --out {dir}/run", "use --amp bf16"),
    ("aux batch for sgd", "train --optimizer sgd --aux-batch-size 8 --out {dir}/run", "--aux-batch-size"),
    ("unknown optimizer", "train --optimizer adamax --out {dir}/run", "unknown optimizer"),
    ("divergence in epoch 1", "train --lr 1e9 --epochs 1 --subset 64 --batch-size 16 --out {dir}/run", "lower --lr"),
    ("missing checkpoint", "inspect {dir}/nothing/model.pt", "no such checkpoint"),
    ("checkpoint is text", "inspect {dir}/text.pt", "text file"),
    ("checkpoint is HDF5", "inspect {dir}/history_like.h5", "HDF5 results file"),
    ("checkpoint is a folder", "eigs {dir}/images", "is a folder"),
    ("zero classes", "inspect {ckpt} --num-classes 0", "--num-classes 0"),
    ("zero classes for eigs", "eigs {ckpt} --num-classes 0 --samples 8", "--num-classes 0"),
    ("input shape syntax", "inspect {ckpt} --input-shape 8x8", "--input-shape"),
    ("arch kwargs break the model", "train --arch-kwargs {{\"width\":0}} --out {dir}/run", "width"),
    # --- data given on the command line
    ("npz string x", "eigs {ckpt} --dataset npz:{dir}/str_x.npz", "must hold real numbers"),
    ("npz x/y lengths", "eigs {ckpt} --dataset npz:{dir}/lengths.npz", "one label per sample"),
    ("npz negative labels", "eigs {ckpt} --dataset npz:{dir}/negative.npz", "negative labels"),
    ("npz 1-D x", "eigs {ckpt} --dataset npz:{dir}/flat.npz", "must be N×D"),
    ("npz no samples", "eigs {ckpt} --dataset npz:{dir}/empty.npz", "holds no samples"),
    ("npz x_test alone", "eigs {ckpt} --dataset npz:{dir}/test_x_only.npz", "without its partner"),
    ("npz float labels", "train --dataset npz:{dir}/float_labels.npz --out {dir}/run", "not whole numbers"),
    ("npz complex x", "train --dataset npz:{dir}/complex.npz --out {dir}/run", "must hold real numbers"),
    ("npz NaN x", "train --dataset npz:{dir}/nan.npz --out {dir}/run", "NaN or infinite"),
    ("npz object arrays", "train --dataset npz:{dir}/objects.npz --out {dir}/run", "not a readable .npz"),
    ("npz is a .npy", "train --dataset npz:{dir}/single.npz --out {dir}/run", "not a readable .npz"),
    ("npz test shape", "train --dataset npz:{dir}/test_shape.npz --out {dir}/run", "x_test samples have shape"),
    ("npz missing", "train --dataset npz:{dir}/nothing.npz --out {dir}/run", "no such .npz file"),
    ("imagefolder size", "train --dataset imagefolder:{dir}/images@abc --out {dir}/run", "whole number of pixels"),
    ("imagefolder no path", "train --dataset imagefolder --out {dir}/run", "needs a path"),
    ("data of another size", "eigs {ckpt} --dataset fashion-mnist --samples 8", "cannot take these samples"),
    # --- numbers out of range
    ("negative seed", "train --seed -1 --label-noise 0.1 --out {dir}/run", "--seed -1"),
    ("subset zero", "train --subset 0 --out {dir}/run", "--subset 0"),
    ("label noise NaN", "train --label-noise nan --out {dir}/run", "--label-noise nan"),
    ("eigs tol NaN", "eigs {ckpt} --tol nan", "--tol nan"),
    ("eigs tol inf", "eigs {ckpt} --tol inf", "--tol inf"),
    ("eigs k 0", "eigs {ckpt} --k 0", "--k 0"),
    ("eigs k above P", "eigs {ckpt} --k 100000000 --max-iter 100000000 --samples 8", "at most the number"),
    ("eigs samples 0", "eigs {ckpt} --samples 0", "--samples 0"),
    ("eigs batch 0", "eigs {ckpt} --batch-size 0 --samples 8", "--batch-size 0"),
    ("eigs bad which", "eigs {ckpt} --which XX", "--which XX"),
    ("landscape infinite range", "landscape {ckpt} --xrange=-inf:inf --out {dir}/s.h5", "finite numbers"),
    ("landscape infinite end", "landscape {ckpt} --xrange=0:inf --out {dir}/s.h5", "finite numbers"),
    ("landscape NaN range", "landscape {ckpt} --yrange=nan:1 --out {dir}/s.h5", "finite numbers"),
    ("landscape huge grid", "landscape {ckpt} --grid 100000 --out {dir}/s.h5", "would need"),
    ("landscape range order", "landscape {ckpt} --xrange 1:-1 --out {dir}/s.h5", "low end must be below"),
    ("landscape range syntax", "landscape {ckpt} --xrange 1 --out {dir}/s.h5", "write LOW:HIGH"),
    ("landscape dim 3", "landscape {ckpt} --dim 3 --out {dir}/s.h5", "--dim 3"),
    ("landscape bad bn", "landscape {ckpt} --bn train --out {dir}/s.h5", "--bn train"),
    ("landscape bad directions", "landscape {ckpt} --directions up --out {dir}/s.h5", "--directions up"),
    ("landscape points per pass", "landscape {ckpt} --points-per-pass 0 --out {dir}/s.h5", "--points-per-pass"),
    # --- result files that are not what the command reads
    ("history of a landscape file", "figures history {dir}/landscape_no_attrs.h5 --out {dir}/h.png",
     "not a history result file"),
    ("history without columns", "figures history {dir}/history_like.h5 --out {dir}/h.png", "damaged"),
    ("history of unequal columns", "figures history {dir}/history_ragged.h5 --out {dir}/h.png", "different lengths"),
    ("history of a folder", "figures history {dir}/images --out {dir}/h.png", "no such file"),
    ("landscape file not JSON", "figures landscape {dir}/landscape_bad_spec.h5 --out {dir}/figs", "damaged"),
    ("landscape file no attrs", "figures landscape {dir}/landscape_no_attrs.h5 --out {dir}/figs", "damaged"),
    ("landscape figure of history", "figures landscape {dir}/history_like.h5 --out {dir}/figs",
     "not a landscape result file"),
    ("density of a damaged file", "figures density {dir}/eigs_no_attrs.h5 --out {dir}/d.png", "damaged"),
    ("density of a folder", "figures density {dir}/images --out {dir}/d.png", "is a folder"),
    ("surface directions damaged", "landscape {ckpt} --directions surface:{dir}/landscape_bad_spec.h5 "
     "--out {dir}/s.h5 --samples 8 --grid 3", "damaged"),
    ("eigs start vectors damaged", "eigs {ckpt} --start-vectors {dir}/eigs_no_attrs.h5 --samples 8", "damaged"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The work folder with the files of :data:`FILES` and a small digits checkpoint."""
    root = tmp_path_factory.mktemp("bad-inputs")
    for name, write in FILES.items():
        write(root / name)
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", {"state_dict": build_model(SMALL_CNN).state_dict(),
                                        "model": SMALL_CNN.to_dict(), "data": DataSpec("digits").to_dict()})
    return root


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.mark.parametrize("command,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(workspace, command, fragment):
    if "fashion-mnist" in command and not FASHION_MNIST.is_dir():
        pytest.skip("needs the Debian package dataset-fashion-mnist (make test installs it)")
    before = _listing(workspace)
    args = command.format(ckpt=workspace / "model.pt", dir=workspace).split()
    device = [] if args[0] in ("figures", "inspect") or "--device" in args else ["--device", "cpu"]
    result = invoke(*args, *device)
    assert_one_clear_line(result, fragment)
    assert _listing(workspace) == before


def test_cases_cover_every_analysis_command():
    """The table keeps a case for each command that reads user files."""
    first_words = {c[1].split()[0] for c in CASES}
    assert {"train", "eigs", "landscape", "figures"} <= first_words
    assert len({c[0] for c in CASES}) == len(CASES)
