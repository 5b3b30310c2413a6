"""Strangers' checkpoints: what a file says never runs code, and a file that is not a checkpoint
(or is damaged) gets one line saying what it is. Crafted files carry payloads that would create
a marker file; the tests assert it never appears."""

import os

import h5py
import pytest
import torch

from conftest import SMALL_CNN, assert_one_clear_line, invoke
from alignsam_diag.data import DataSpec
from alignsam_diag.errors import UserError
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.models.checkpoint import load_checkpoint, read_file, save_checkpoint

HUBCONF = """
import pathlib
pathlib.Path({marker!r}).write_text("the hub payload ran")
def net(**kwargs):
    raise SystemExit("never built")
"""


def crafted(path, arch, kwargs):
    """A checkpoint of ours in every other respect (loads with weights_only=True) whose stored model
    spec names ``arch`` with ``kwargs``."""
    torch.manual_seed(0)
    save_checkpoint(path, {"state_dict": build_model(SMALL_CNN).state_dict(),
                           "model": {**SMALL_CNN.to_dict(), "arch": arch, "kwargs": kwargs},
                           "data": DataSpec("digits").to_dict()})
    return path


@pytest.fixture
def attacks(tmp_path):
    """(checkpoint, marker) for the two payloads: a logging config that truncates the marker file,
    and torch.hub loading a local hubconf.py that writes it."""
    marker = tmp_path / "PWNED"
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    return [
        (crafted(tmp_path / "logging.pt", "logging:basicConfig", {"filename": str(marker), "filemode": "w"}), marker),
        (crafted(tmp_path / "hub.pt", "torch.hub:load",
                 {"repo_or_dir": str(tmp_path / "bundle"), "model": "net", "source": "local"}), marker),
    ]


@pytest.mark.parametrize("command", [
    ["inspect"],
    ["eigs", "--samples", "8", "--k", "1", "--max-iter", "2", "--device", "cpu"],
    ["landscape", "--dim", "1", "--grid", "3", "--samples", "8", "--device", "cpu"],
])
def test_stored_import_path_is_refused_by_default(tmp_path, attacks, command):
    for path, marker in attacks:
        out = ["--out", tmp_path / "surface.h5"] if command[0] == "landscape" else []
        result = invoke(command[0], path, *command[1:], *out)
        assert_one_clear_line(result, "would run code")
        assert "--arch" in result.stderr and "--trust-checkpoint" in result.stderr
        assert not marker.exists()
        assert not (tmp_path / "surface.h5").exists()


def test_naming_another_arch_uses_the_weights_not_the_stored_spec(attacks):
    for path, marker in attacks:
        result = invoke("inspect", path, "--arch", "cnn-small", "--arch-kwargs", '{"width": 8}',
                        "--input-shape", "1,8,8")
        assert result.exit_code == 0, result.stderr
        assert not marker.exists()


def test_stored_arguments_must_be_plain_data(tmp_path):
    # Only a trusted pickle can hold a function; even then it is no model argument.
    torch.save({"format": "alignsam-diag/1", "state_dict": build_model(SMALL_CNN).state_dict(),
                "model": {**SMALL_CNN.to_dict(), "kwargs": {"width": 8, "act": os.system}}}, tmp_path / "f.pt")
    with pytest.raises(UserError, match="invalid kwargs"):
        load_checkpoint(tmp_path / "f.pt", trust=True)
    save_checkpoint(tmp_path / "s.pt", {"state_dict": build_model(SMALL_CNN).state_dict(),
                                        "model": {**SMALL_CNN.to_dict(), "num_classes": "10"}})
    with pytest.raises(UserError, match="invalid num_classes"):
        load_checkpoint(tmp_path / "s.pt")


@pytest.mark.parametrize("kwargs", [{"pretrained": True}, {"checkpoint_path": "/elsewhere/weights.pth"}])
def test_timm_never_fetches_or_reads_other_weights(kwargs):
    with pytest.raises(UserError, match="the weights come from the checkpoint"):
        build_model(ModelSpec("timm:test_resnet", 10, kwargs=kwargs))


def _hdf5(path):
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "landscape"


@pytest.mark.parametrize("make,fragment", [
    (_hdf5, "is an HDF5 results file"),
    (lambda p: p.write_text("these are not the weights you are looking for\n"), "is a text file"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(bytes(range(7, 250))), "unknown format"),
    (lambda p: p.mkdir(), "is a folder"),
], ids=["hdf5", "text", "empty", "binary", "folder"])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, make, fragment):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(UserError, match=fragment) as err:
        read_file(path)
    assert "--trust-checkpoint" not in str(err.value) and "could run code" not in str(err.value)
    assert_one_clear_line(invoke("inspect", path), fragment)


def test_a_folder_points_at_the_checkpoint_inside(checkpoints):
    result = invoke("inspect", checkpoints[0].parent)
    assert_one_clear_line(result, f"give a file inside it (e.g. {checkpoints[0]})")


def test_truncated_and_damaged_checkpoints(tmp_path):
    full = tmp_path / "last.pt"
    save_checkpoint(full, {"state_dict": build_model(ModelSpec("mlp", 10, 1, 8)).state_dict(),
                           "model": ModelSpec("mlp", 10, 1, 8).to_dict()})
    data = full.read_bytes()
    for cut in (3, 40, len(data) // 3, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated or damaged") as err:
            read_file(tmp_path / "cut.pt")
        assert "Errno" not in str(err.value) and "--trust-checkpoint" not in str(err.value), cut
    damaged = bytearray(data)
    start = data.index(b"\x80\x02", data.index(b"data.pkl"))  # the pickled dict, stored uncompressed
    damaged[start + 2:start + 10] = b"\xff" * 8
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    assert_one_clear_line(invoke("inspect", tmp_path / "damaged.pt"), "truncated or damaged")


def test_argument_mistakes_are_one_line(checkpoints):
    cases = [(["--arch", "cnn-small", "--arch-kwargs", '{"width": 0}'], "has an empty layer"),
             (["--arch", "cnn-small", "--arch-kwargs", '{"width": -2}'], "cannot be built"),
             (["--arch", "cnn-small", "--arch-kwargs", '{"depth": 2}'], "unexpected keyword argument 'depth'"),
             (["--num-classes", "0"], "--num-classes 0"),
             (["--dataset", "digits", "--input-shape", "1,8,8"], "not both")]
    for flags, fragment in cases:
        assert_one_clear_line(invoke("inspect", checkpoints[0], *flags), fragment)


def test_a_head_without_outputs_asks_for_the_class_count(tmp_path):
    state = build_model(SMALL_CNN).state_dict()
    state["9.weight"], state["9.bias"] = torch.zeros(0, 64), torch.zeros(0)
    torch.save(state, tmp_path / "w.pt")
    result = invoke("inspect", tmp_path / "w.pt", "--arch", "cnn-small", "--arch-kwargs", '{"width": 8}',
                    "--input-shape", "1,8,8")
    assert_one_clear_line(result, "0 outputs, so the class count cannot be read; pass --num-classes")


def test_resume_of_a_run_whose_last_pt_names_an_import_path_runs_nothing(tmp_path):
    """A run folder from a stranger: its last.pt's stored configuration names the logging payload
    as the architecture; `train --resume` refuses it before building anything."""
    run = tmp_path / "run"
    assert invoke("train", "--epochs", "1", "--subset", "32", "--arch", "mlp", "--device", "cpu",
                  "--out", run).exit_code == 0
    marker = tmp_path / "PWNED"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["config"]["arch"] = "logging:basicConfig"
    ckpt["config"]["arch_kwargs"] = {"filename": str(marker), "filemode": "w"}
    torch.save(ckpt, run / "last.pt")
    result = invoke("train", "--resume", "--epochs", "2", "--device", "cpu", "--out", run)
    assert_one_clear_line(result, "would run code")
    assert not marker.exists()
