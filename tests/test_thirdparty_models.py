"""Third-party models as researchers have them: the model code of chenyaofo/pytorch-cifar-models
and davda54/sam (mirrored in ``fixtures.thirdparty_nets``), timm and torchvision, in the file
formats they are shared in. Each one is inspected, and its Hessian top eigenvalue and a 1-D
loss line are computed, through the CLI with documented flags only."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from conftest import invoke
from alignsam_diag.models import ModelSpec, build_model, count_parameters
from alignsam_diag.models.checkpoint import guess_shapes, load_checkpoint, wrapper_prefix
from alignsam_diag.models.registry import factory_arguments
from alignsam_diag.store.landscape import Grid, LandscapeFile, StoredSurface, Surface, read_landscape, write_landscape
from fixtures import thirdparty_nets as nets
from test_checkpoint import same_weights

WRN_KWARGS = {"depth": 10, "width_factor": 1, "dropout": 0.0}


@dataclass
class Case:
    """A model as its authors build it, how it is saved, and the --arch/--arch-kwargs that describe it."""

    arch: str
    build: Callable[[], torch.nn.Module]
    save: Callable[[torch.nn.Module, Path], Path]
    kwargs: dict = field(default_factory=dict)

    @property
    def flags(self) -> list[str]:
        return ["--arch", self.arch, *(["--arch-kwargs", json.dumps(self.kwargs)] if self.kwargs else [])]


def plain(model, folder):
    torch.save(model.state_dict(), folder / "model.pth")
    return folder / "model.pth"


def ddp(model, folder):
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, folder / "model.bin")
    return folder / "model.bin"


def safetensors(model, folder):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


CASES = {
    "chenyaofo-cifar10_resnet20": Case("fixtures.thirdparty_nets:cifar10_resnet20", nets.cifar10_resnet20, plain),
    "davda54-WideResNet": Case("fixtures.thirdparty_nets:WideResNet",
                               lambda: nets.WideResNet(**WRN_KWARGS, in_channels=3, labels=10), ddp, WRN_KWARGS),
    # safetensors come back with sorted keys: a depthwise conv comes first
    "timm-convnext": Case("timm:test_convnext", lambda: timm.create_model("test_convnext", num_classes=10),
                          safetensors),
    # the user's in_chans beats the inferred one (no "multiple values for keyword argument")
    "timm-resnet-in_chans": Case("timm:test_resnet", lambda: timm.create_model("test_resnet", num_classes=10), plain,
                                 {"in_chans": 3}),
    # its head is a 1×1 conv: the class count is read from the last conv when there is no Linear
    "torchvision-squeezenet": Case("torchvision.models:squeezenet1_1",
                                   lambda: torchvision.models.squeezenet1_1(num_classes=10), plain),
}


@pytest.fixture(scope="module")
def rgb_data(tmp_path_factory) -> Path:
    """32 CIFAR-sized samples of 10 classes as an ``npz:`` data set."""
    path = tmp_path_factory.mktemp("data") / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((32, 3, 32, 32)).astype(np.float32), y=np.arange(32) % 10)
    return path


@pytest.mark.parametrize("name", CASES)
def test_inspect_eigs_and_landscape_of_third_party_models(tmp_path, rgb_data, name):
    case = CASES[name]
    torch.manual_seed(0)
    original = case.build().eval()
    path = case.save(original, tmp_path)
    described = case.flags

    shown = invoke("inspect", path, *described, "--json")
    assert shown.exit_code == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert (summary["arch"], summary["num_classes"], summary["in_channels"]) == (case.arch, 10, 3)
    assert summary["parameters"] == count_parameters(original)

    data = ["--dataset", f"npz:{rgb_data}", "--device", "cpu"]
    eigs = invoke("eigs", path, *described, *data, "--samples", "32", "--k", "1", "--max-iter", "5", "--json")
    assert eigs.exit_code == 0, eigs.stderr
    assert np.isfinite(json.loads(eigs.stdout)[0]["eigenvalues"][0])

    out = tmp_path / "line.h5"
    line = invoke("landscape", path, *described, *data, "--dim", "1", "--grid", "3", "--samples", "16", "--out", out)
    assert line.exit_code == 0, line.stderr
    with h5py.File(out) as f:
        group = f["surfaces/model"]
        fraction, percent, done = group["train_accuracy"][:], f["train_acc"][:], group["done"][:]
        assert done.all() and ((0 <= fraction) & (fraction <= 1)).all()
        np.testing.assert_array_equal(percent, 100 * fraction)  # Li et al.'s plot_1D.py reads percent
    assert same_weights(load_checkpoint(path, arch=case.arch, arch_kwargs=case.kwargs).model, original)


def test_landscape_files_hold_li_et_al_accuracy_in_percent(tmp_path):
    """Li et al.'s plot_1D.py/plot_2D.py read ``train_acc`` as percent; the tool keeps and reads the
    fraction under ``train_accuracy`` (older files: ``train_acc`` was the fraction)."""
    path = tmp_path / "s.h5"
    surface = Surface(Grid(np.array([-1.0, 0.0, 1.0])), np.array([2.0, 1.0, np.nan]), np.array([0.25, 0.5, np.nan]),
                      np.array([True, True, False]))
    write_landscape(path, LandscapeFile({"split": "train"}, [StoredSurface("m", "m.pt", surface)]))
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["train_acc"][:], [25.0, 50.0, -1.0])
        np.testing.assert_array_equal(f["surfaces/m/train_accuracy"][:], [0.25, 0.5, -1.0])
    np.testing.assert_array_equal(read_landscape(path).group().surface.acc, [0.25, 0.5, np.nan])
    with h5py.File(path, "a") as f:  # as written before the fraction had a name of its own
        del f["surfaces/m/train_accuracy"]
        f["surfaces/m/train_acc"][...] = [0.25, 0.5, -1.0]
    np.testing.assert_array_equal(read_landscape(path).group().surface.acc, [0.25, 0.5, np.nan])


def test_torchvision_resnet18_with_its_imagenet_head(tmp_path):
    """Built first with a placeholder class count, then rebuilt with the 1000 classes of its head."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    result = invoke("inspect", tmp_path / "resnet18.pth", "--arch", "torchvision.models:resnet18", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["num_classes"], summary["in_channels"], summary["parameters"]) == (1000, 3, 11_689_512)


def test_convnext_channels_are_read_at_the_stem_not_in_key_order(tmp_path):
    torch.manual_seed(0)
    for channels in (1, 3):
        model = timm.create_model("test_convnext", num_classes=7, in_chans=channels)
        state = {k: v.contiguous() for k, v in sorted(model.state_dict().items())}
        first_conv = next(v for v in state.values() if v.dim() == 4)
        assert first_conv.shape[1] == 1  # what "the first 4-D weight" would have guessed
        save_file(state, str(tmp_path / "m.safetensors"))
        loaded = load_checkpoint(tmp_path / "m.safetensors", arch="timm:test_convnext")
        assert (loaded.spec.in_channels, loaded.spec.num_classes) == (channels, 7)


def test_factories_get_only_the_arguments_they_declare():
    spec = ModelSpec("x", num_classes=7, in_channels=1, image_size=28)
    assert factory_arguments(nets.WideResNet, ModelSpec("x", 7, 1, 28, kwargs=WRN_KWARGS)) == {
        "labels": 7, "in_channels": 1, **WRN_KWARGS}
    assert factory_arguments(nets.cifar10_resnet20, spec) == {"num_classes": 7}  # **kwargs: the class count only
    assert factory_arguments(lambda width=4: None, spec) == {}  # declares none of the names, no **kwargs
    # the user's names win: any alias of a value replaces the inferred one
    user = {**WRN_KWARGS, "labels": 3}
    assert factory_arguments(nets.WideResNet, ModelSpec("x", 7, 1, 28, kwargs=user)) == {"in_channels": 1, **user}
    mapped = ModelSpec("x", 7, 1, 28, kwargs={"n_classes": 3, "in_chans": 2})
    assert factory_arguments(nets.cifar10_resnet20, mapped) == {"n_classes": 3, "in_chans": 2}
    assert build_model(ModelSpec("cnn-small", 10, 3, 8, kwargs={"in_channels": 1}))[0].in_channels == 1


def test_davda54_wide_resnet_needs_its_own_arguments(tmp_path):
    torch.save(nets.WideResNet(**WRN_KWARGS, in_channels=3, labels=10).state_dict(), tmp_path / "wrn.pt")
    result = invoke("inspect", tmp_path / "wrn.pt", "--arch", "fixtures.thirdparty_nets:WideResNet")
    assert result.exit_code == 2
    assert "missing a required argument: 'depth'" in result.stderr and len(result.stderr.splitlines()) == 1


def test_lightning_checkpoint_of_a_compiled_net(tmp_path):
    torch.manual_seed(0)
    net = nets.cifar10_resnet20(num_classes=5)
    module = nets.WithLoss(torch.compile(net))
    assert next(iter(module.state_dict())).startswith("model._orig_mod.")
    torch.save({"state_dict": module.state_dict(), "epoch": 7, "pytorch-lightning_version": "2.4.0"},
               tmp_path / "last.ckpt")
    result = invoke("inspect", tmp_path / "last.ckpt", "--arch", "fixtures.thirdparty_nets:cifar10_resnet20", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["source"] == "lightning" and summary["num_classes"] == 5 and summary["meta"]["epoch"] == 7
    loaded = load_checkpoint(tmp_path / "last.ckpt", arch="fixtures.thirdparty_nets:cifar10_resnet20")
    assert same_weights(loaded.model, net)


@pytest.mark.parametrize("keys,prefix", [
    (["module.model._orig_mod.fc.weight", "module.model._orig_mod.conv1.weight"], "module.model._orig_mod."),
    (["_orig_mod.fc.weight", "_orig_mod.conv1.weight", "ema.fc.weight"], "_orig_mod."),
    (["fc.weight", "conv1.weight"], ""),
    (["backbone.encoder.fc.weight", "backbone.encoder.conv1.weight", "fc.weight"], "backbone.encoder."),
])
def test_wrapper_prefix_is_the_one_that_matches_most_model_keys(keys, prefix):
    assert wrapper_prefix(keys, {"fc.weight", "conv1.weight", "conv1.bias"}) == prefix


def test_trusted_whole_model_pickle_is_the_model(tmp_path):
    torch.manual_seed(0)
    model = nets.WideResNet(**WRN_KWARGS, in_channels=1, labels=4)
    torch.save(model, tmp_path / "whole.pt")
    refused = invoke("inspect", tmp_path / "whole.pt")
    assert refused.exit_code == 2 and "--trust-checkpoint" in refused.stderr
    shown = invoke("inspect", tmp_path / "whole.pt", "--trust-checkpoint", "--json")
    assert shown.exit_code == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["source"] == "pickled-model" and summary["arch"] == "fixtures.thirdparty_nets:WideResNet"
    assert (summary["num_classes"], summary["in_channels"]) == (4, 1)
    loaded = load_checkpoint(tmp_path / "whole.pt", trust=True)
    assert isinstance(loaded.model, nets.WideResNet)
    assert torch.equal(loaded.model.f[0].weight, model.f[0].weight)


@pytest.mark.parametrize("how", [["--input-shape", "1,8,8"], ["--dataset", "digits"], []])
def test_mlp_state_dict_with_its_input_shape(tmp_path, how):
    """A plain MLP's inputs: given (--input-shape, --dataset) or, with neither, read from the first
    Linear layer's in_features as a 1- or 3-channel square image (64 = 1×8×8)."""
    torch.save(build_model(ModelSpec("mlp", 10, 1, 8)).state_dict(), tmp_path / "mlp.pt")
    result = invoke("inspect", tmp_path / "mlp.pt", "--arch", "mlp", *how, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["in_channels"], summary["image_size"], summary["num_classes"]) == (1, 8, 10)


def test_mlp_shape_guess_from_in_features():
    for channels, size in ((1, 28), (3, 32), (1, 8)):
        model = build_model(ModelSpec("mlp", 10, 3, 32))
        state = build_model(ModelSpec("mlp", 6, channels, size)).state_dict()
        assert guess_shapes(model, state) == {"in_channels": channels, "image_size": size, "num_classes": 6}
    odd = build_model(ModelSpec("mlp", 6, 2, 8)).state_dict()  # 128 inputs: neither 1×s² nor 3×s²
    assert guess_shapes(build_model(ModelSpec("mlp", 10, 3, 32)), odd) == {"num_classes": 6}


def test_wrong_input_shape_is_a_clear_error(tmp_path):
    torch.save(build_model(ModelSpec("mlp", 10, 1, 8)).state_dict(), tmp_path / "mlp.pt")
    for shape, message in (("3,8,8", "shape mismatches"), ("1,8", "C,H,W"), ("1,8,9", "square"), ("0,8,8", "C,H,W")):
        result = invoke("inspect", tmp_path / "mlp.pt", "--arch", "mlp", "--input-shape", shape)
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, shape
