"""Model registry: every named architecture builds for the data's shape and runs."""

import sys
import textwrap

import pytest
import torch

from alignsam_diag.errors import UserError
from alignsam_diag.models import MODELS, ModelSpec, build_model, count_parameters


def test_resnet32_matches_he_et_al():
    model = build_model(ModelSpec("resnet32", num_classes=10, in_channels=3, image_size=32))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages × 5 blocks × 2 convs; + fc = 32 layers
    assert 0.46e6 <= count_parameters(model) <= 0.47e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch,in_channels,size", [
    ("mlp", 1, 8), ("cnn-small", 1, 8), ("cnn-small", 1, 28), ("resnet32", 1, 28),
    ("resnet18", 3, 32), ("densenet121", 1, 32), ("efficientnet_b2", 3, 32),
])
def test_named_models_follow_the_data(arch, in_channels, size):
    kwargs = {"small_input": True} if arch in ("resnet18", "densenet121", "efficientnet_b2") else {}
    model = build_model(ModelSpec(arch, num_classes=7, in_channels=in_channels, image_size=size, kwargs=kwargs)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


TORCHVISION = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b2", "efficientnet_b3",
               "efficientnet_b4")


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_models_take_digits_and_fashion_mnist_by_default(arch):
    # DenseNet and EfficientNet take the small stem under 32 px (densenet121's ImageNet stem cannot take
    # 8×8 at all); the ResNets keep torchvision's, which trains better on these images
    for size in (8, 28):
        model = build_model(ModelSpec(arch, num_classes=10, in_channels=1, image_size=size)).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    stems = {"resnet": lambda m: m.conv1, "densenet": lambda m: m.features.conv0,
             "efficientnet": lambda m: m.features[0][0]}
    stem = next(get for prefix, get in stems.items() if arch.startswith(prefix))
    assert stem(build_model(ModelSpec(arch, 10, 1, 28))).stride == ((2, 2) if arch.startswith("resnet") else (1, 1))
    assert stem(build_model(ModelSpec(arch, 10, 3, 32))).stride == (2, 2)  # CIFAR/ImageNet: torchvision's stem
    assert stem(build_model(ModelSpec(arch, 10, 3, 32, {"small_input": True}))).stride == (1, 1)


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b2"])
def test_residual_blocks_start_as_the_identity(arch):
    # Zero-initialised residual branches: a block's output equals its input at initialisation, so
    # the deep networks start trainable at lr 0.1 (ResNet-50 and EfficientNet began at loss 6-20).
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, num_classes=10, in_channels=3, image_size=32)).eval()
    if arch == "resnet50":
        block, x = model.layer1[1], torch.randn(2, 256, 8, 8).relu()  # the ReLU after the sum keeps x ≥ 0
    else:
        block = next(b for b in model.modules() if type(b).__name__ == "MBConv" and b.use_res_connect)
        x = torch.randn(2, block.block[0][0].in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
        if arch.startswith("efficientnet"):  # the classifier starts at zero: uniform predictions, loss ln 10
            logits = model(torch.randn(4, 3, 32, 32))
            torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, torch.arange(4)),
                                       torch.tensor(2.302585), rtol=1e-6, atol=1e-6)


def test_every_registered_name_builds():
    # WRN-28-10 and the large torchvision models are only built, not run, to keep the suite fast.
    for name in MODELS:
        model = build_model(ModelSpec(name, num_classes=10, in_channels=3, image_size=32))
        assert count_parameters(model) > 0
    wrn = build_model(ModelSpec("wrn28-10", num_classes=100, in_channels=3, image_size=32))
    assert 36.4e6 < count_parameters(wrn) < 36.6e6


def test_import_path_factory(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        import torch
        def tiny(num_classes, width=4):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.Linear(width, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelSpec("mynets:tiny", num_classes=3, kwargs={"width": 5}))
    assert model[1].out_features == 5 and model[2].out_features == 3
    sys.modules.pop("mynets", None)


def test_bad_names_are_clear_errors():
    with pytest.raises(UserError, match="resnet32"):
        build_model(ModelSpec("resnet33", num_classes=10))
    with pytest.raises(UserError, match="cannot import"):
        build_model(ModelSpec("no_such_module:f", num_classes=10))
    with pytest.raises(UserError, match="arch-kwargs"):
        build_model(ModelSpec("mlp", num_classes=10, kwargs={"nonsense": 1}))


def test_timm_models_by_name():
    model = build_model(ModelSpec("timm:resnet10t", num_classes=5, in_channels=1, image_size=32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(UserError, match="timm has no model"):
        build_model(ModelSpec("timm:not-a-model", num_classes=5))
