"""Checkpoints: ours and third-party formats, clear errors, and safe loading of strangers' files."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from alignsam_diag.errors import UserError
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.models.checkpoint import load_checkpoint, read_file, save_checkpoint
from alignsam_diag.models.summary import summarise

SPEC = ModelSpec("cnn-small", num_classes=10, in_channels=1, image_size=8)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(SPEC)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_our_checkpoint_round_trip_with_weights_only(tmp_path, model):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"state_dict": model.state_dict(), "model": SPEC.to_dict(),
                           "data": {"name": "digits"}, "epoch": 3, "metrics": {"test_acc": 0.9}})
    assert not list(tmp_path.glob("*.tmp-*"))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "alignsam-diag/1" and raw["epoch"] == 3
    loaded = load_checkpoint(path)
    assert loaded.source == "alignsam-diag" and loaded.spec == SPEC and loaded.data == {"name": "digits"}
    assert same_weights(loaded.model, model)


@pytest.mark.parametrize("wrap", ["plain", "ddp", "lightning", "nested-model", "safetensors"])
def test_third_party_formats(tmp_path, model, wrap):
    state = model.state_dict()
    if wrap == "plain":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    elif wrap == "ddp":
        path = tmp_path / "w.bin"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif wrap == "lightning":
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 4,
                    "global_step": 100, "pytorch-lightning_version": "2.4.0"}, path)
    elif wrap == "nested-model":
        path = tmp_path / "w.pt"
        torch.save({"model": state, "epoch": 2}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_checkpoint(path, arch="cnn-small", image_size=8)
    assert loaded.spec.num_classes == 10 and loaded.spec.in_channels == 1  # read from the weights
    assert same_weights(loaded.model, model)
    if wrap == "lightning":
        assert loaded.source == "lightning" and loaded.meta["epoch"] == 4


def test_third_party_without_arch_asks_for_it(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match="--arch"):
        load_checkpoint(tmp_path / "w.pt")


def test_wrong_architecture_names_first_offenders(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path / "w.pt", arch="mlp", image_size=8)
    message = str(err.value)
    assert "missing keys" in message and "unexpected keys" in message and "\n" not in message
    with pytest.raises(UserError, match=r"shape mismatches .*\(10, 256\) vs model \(7, 256\)"):
        load_checkpoint(tmp_path / "w.pt", arch="cnn-small", num_classes=7, image_size=8)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="bad.pt"):
        read_file(path)
    with pytest.raises(UserError, match="no such checkpoint"):
        read_file(tmp_path / "missing.pt")


MALICIOUS = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"state_dict": {}, "x": Payload()}, sys.argv[1])
"""


def test_code_running_pickle_is_refused_and_payload_never_runs(tmp_path, model):
    path, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    subprocess.run([sys.executable, "-c", MALICIOUS, str(path), str(marker)], check=True)
    assert not marker.exists()
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_checkpoint(path, arch="cnn-small")
    assert not marker.exists()
    # With explicit trust the file is fully unpickled: the payload runs (which is why it is opt-in).
    with pytest.raises(UserError):
        load_checkpoint(path, arch="cnn-small", trust=True)
    assert marker.exists()


def test_summary_counts_parameters_by_layer_type(tmp_path, model):
    save_checkpoint(tmp_path / "c.pt", {"state_dict": model.state_dict(), "model": SPEC.to_dict(), "epoch": 1,
                                        "history": {"epoch": [1.0], "test_acc": [0.5]}})
    s = summarise(load_checkpoint(tmp_path / "c.pt"))
    assert sum(s.parameters_by_layer.values()) == s.parameters
    assert s.parameters_by_layer["Conv2d"] == 1 * 32 * 9 + 32 * 64 * 9
    assert s.history == {"epoch": [1.0], "test_acc": [0.5]} and s.meta["epoch"] == 1
