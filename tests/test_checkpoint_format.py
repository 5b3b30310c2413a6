"""The checkpoint format is defined once (``Checkpoint``, format ``alignsam-diag/1``): what ``train``
writes is exactly its fields, read back unchanged; files of a newer format are refused in one line
by every reader (inspect, the analyses, --resume); files written by the release before this
dataclass still load, report and resume; runtime-only options are never stored."""

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import torch

from alignsam_diag.data import DataSpec
from alignsam_diag.errors import UserError
from alignsam_diag.inputs import load_inputs
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.models.checkpoint import FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from alignsam_diag.train import TrainConfig, train
from conftest import error_line, invoke

#: A last.pt written by `train` before Checkpoint existed (digits subset 64, cnn-small width 2,
#: align-sam, 1 epoch); stored as .bin because .gitignore leaves out *.pt.
FORMAT_1 = Path(__file__).parent / "fixtures" / "checkpoint_format1.bin"
SPEC = ModelSpec("mlp", 10, 1, 8, {"hidden": 8})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch Align-SAM run (momentum buffers and an aux batch size to store)."""
    folder = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(data=DataSpec("digits", subset=64, download=True), arch="mlp",
                         arch_kwargs={"hidden": 8}, optimizer="align-sam", epochs=1, batch_size=32)
    train(config, folder)
    return folder


def same(a, b) -> bool:
    """Equality of stored values, tensors (also nested) compared exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    return a == b


def test_train_writes_exactly_the_fields_of_the_format_and_reads_them_back(run):
    raw = torch.load(run / "last.pt", weights_only=True)
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    assert raw["format"] == FORMAT == "alignsam-diag/1"
    assert set(raw) == fields | {"format"}  # no stray key, and no field left unwritten
    record = Checkpoint.read(run / "last.pt")
    assert all(getattr(record, name) is not None for name in fields)
    assert same(record.to_dict(), {k: v for k, v in raw.items() if k != "format"})
    assert record.model == ModelSpec("mlp", 10, 1, 8, {"hidden": 8}) and record.epoch == 1
    assert record.optimizer["name"] == "align-sam" and record.optimizer["aux_batch_size"] == 8


def test_a_record_round_trips_and_unset_fields_are_not_written(tmp_path):
    record = Checkpoint(state_dict=build_model(SPEC).state_dict(), model=SPEC, data=DataSpec("digits").to_dict(),
                        epoch=3, metrics={"test_acc": 0.5})
    record.save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert set(raw) == {"format", "version", "state_dict", "model", "data", "epoch", "metrics"}
    back = Checkpoint.read(tmp_path / "c.pt")
    assert same(back.to_dict(), {**record.to_dict(), "version": raw["version"]}) and back.model == SPEC


def test_runtime_only_options_are_not_stored(run):
    raw = torch.load(run / "last.pt", weights_only=True)
    assert "download" not in raw["data"] and "download" not in raw["config"]["data"]
    assert "device" not in raw["config"] and "out" not in raw["config"]


def newer(source: Path, target: Path) -> Path:
    """``source`` as a release with format 2 would write it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**torch.load(source, weights_only=True), "format": "alignsam-diag/2"}, target)
    return target


NEWER = "written by a newer alignsam-diag (format 2); upgrade alignsam-diag to read it"


def test_a_newer_format_is_refused_in_one_line_by_every_reader(run, tmp_path):
    path = newer(run / "last.pt", tmp_path / "newer" / "last.pt")
    with pytest.raises(UserError, match=re.escape(NEWER)):
        load_checkpoint(path)
    with pytest.raises(UserError, match=re.escape(NEWER)):
        load_inputs(path, samples=8)
    for command in (["inspect", path], ["train", "--resume", "--out", path.parent, "--device", "cpu"]):
        assert error_line(invoke(*command)) == f"error: {path}: {NEWER} (this one reads format 1)."


@pytest.mark.parametrize("change,problem", [
    ({"epoch": "3"}, "invalid epoch"), ({"state_dict": None}, "no state_dict"),
    ({"state_dict": {"w": [1.0]}}, "invalid state_dict"), ({"model": "mlp"}, "invalid model"),
    ({"format": "alignsam-diag/x"}, "unknown checkpoint format 'alignsam-diag/x'"),
])
def test_a_file_of_ours_with_a_field_of_the_wrong_type_is_named_as_altered(tmp_path, change, problem):
    payload = {"state_dict": build_model(SPEC).state_dict(), "model": SPEC.to_dict(), "epoch": 3}
    torch.save({"format": FORMAT, **payload, **change}, tmp_path / "c.pt")
    with pytest.raises(UserError, match=problem) as caught:
        load_checkpoint(tmp_path / "c.pt")
    assert "\n" not in str(caught.value)


def test_a_format_1_file_of_the_previous_release_still_loads_reports_and_resumes(tmp_path):
    ckpt = load_checkpoint(FORMAT_1)
    assert ckpt.source == "alignsam-diag" and ckpt.spec.arch == "cnn-small" and ckpt.optimizer == "align-sam"
    report = invoke("inspect", FORMAT_1, "--json")
    assert report.exit_code == 0, report.stderr
    inputs = load_inputs(FORMAT_1, samples=16)
    assert len(inputs.data) == 16  # the stored data spec (digits, subset 64) was used
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(FORMAT_1, run / "last.pt")
    done = invoke("train", "--resume", "--out", run, "--epochs", "2", "--device", "cpu", "--json")
    assert done.exit_code == 0, done.stderr
    resumed = Checkpoint.read(run / "last.pt")
    assert resumed.epoch == 2 and resumed.config["optimizer"] == "align-sam"
    assert resumed.config["hyper"] == {"rho": 0.05, "lam": 2.0} and resumed.config["aux_batch_size"] == 8


def test_save_checkpoint_tags_any_payload_with_the_format(tmp_path):
    save_checkpoint(tmp_path / "w.pt", {"w": torch.zeros(2)})
    assert torch.load(tmp_path / "w.pt", weights_only=True)["format"] == FORMAT
