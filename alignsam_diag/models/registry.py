"""Models by name.

``--arch`` accepts a registered name (``mlp``, ``cnn-small``, ``resnet32``, ``wrn28-10``,
``resnet18/34/50``, ``densenet121``, ``efficientnet_b2/b3/b4``), ``timm:NAME`` when timm is
installed, or an import path ``package.module:factory``. Every factory is called as
``factory(num_classes=..., in_channels=..., image_size=..., **kwargs)`` except import paths,
which receive ``num_classes`` and the user's ``kwargs`` only.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import UserError
from ..registry import Registry
from . import cifar_resnets, small, torchvision_models

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")

for _name, _factory in {
    "mlp": small.mlp,
    "cnn-small": small.cnn_small,
    "resnet32": cifar_resnets.resnet32,
    "wrn28-10": cifar_resnets.wrn28_10,
    "resnet18": torchvision_models.resnet18,
    "resnet34": torchvision_models.resnet34,
    "resnet50": torchvision_models.resnet50,
    "densenet121": torchvision_models.densenet121,
    "efficientnet_b2": torchvision_models.efficientnet_b2,
    "efficientnet_b3": torchvision_models.efficientnet_b3,
    "efficientnet_b4": torchvision_models.efficientnet_b4,
}.items():
    MODELS.register(_name)(_factory)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint.

    arch: registry name, ``timm:NAME`` or ``package.module:factory``.
    num_classes / in_channels / image_size: follow the data set (image_size in pixels, square).
    kwargs: extra factory arguments (e.g. ``{"small_input": true}``), JSON-serialisable.
    """

    arch: str
    num_classes: int
    in_channels: int = 3
    image_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(**{k: d[k] for k in ("arch", "num_classes", "in_channels", "image_size") if k in d},
                   kwargs=dict(d.get("kwargs") or {}))


def _timm_factory(name: str) -> ModelFactory:
    try:
        import timm
    except ImportError:
        raise UserError(f"--arch timm:{name} needs timm; install it with `pip install timm`.") from None
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r}; `python -c 'import timm; print(timm.list_models())'` lists them.")

    def build(num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    return build


def _import_factory(path: str) -> ModelFactory:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"--arch {path}: cannot import {attr!r} from {module_name!r} ({err}); "
                        "give package.module:factory on your PYTHONPATH.") from None

    def build(num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
        return factory(num_classes=num_classes, **kwargs)
    return build


def resolve_factory(arch: str) -> ModelFactory:
    if arch.startswith("timm:"):
        return _timm_factory(arch[len("timm:"):])
    if ":" in arch:
        return _import_factory(arch)
    return MODELS.get(arch)


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec`` with fresh (seed-dependent) weights."""
    factory = resolve_factory(spec.arch)
    try:
        model = factory(num_classes=spec.num_classes, in_channels=spec.in_channels,
                        image_size=spec.image_size, **spec.kwargs)
    except TypeError as err:
        raise UserError(f"--arch {spec.arch}: bad --arch-kwargs {spec.kwargs} ({err}).") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec.arch}: the factory returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
