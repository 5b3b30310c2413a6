"""Models by name.

``--arch`` accepts a registered name (``mlp``, ``cnn-small``, ``resnet32``, ``wrn28-10``,
``resnet18/34/50``, ``densenet121``, ``efficientnet_b2/b3/b4``), ``timm:NAME`` when timm is
installed, or an import path ``package.module:factory`` (a function or a class).

Every factory is called the way its author wrote it: :func:`build_model` reads its signature
and passes the class count, input channels and image size only under the names it declares
(:data:`CLASS_ARGS`, :data:`CHANNEL_ARGS`, :data:`SIZE_ARGS`, e.g. davda54's
``WideResNet(..., in_channels, labels)``); a factory that declares none of the class-count names
but takes ``**kwargs`` gets ``num_classes``. The spec's ``kwargs`` (``--arch-kwargs``) always
win: naming any alias of a value (``{"labels": 10}``, ``{"in_chans": 1}``) replaces the
inferred one. ``timm:NAME`` is ``timm.create_model(NAME, pretrained=False, num_classes=...,
in_chans=...)``; its ``img_size`` (ViTs) is given with ``--arch-kwargs``.

The registered names map to their factories' import paths, imported when a model is built, so
this module (and ``--help``, which lists :data:`MODELS`) loads without torch.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import OptionError, UserError, first_line
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

ModelFactory = Callable[..., "nn.Module"]
#: Built-in architectures: name -> ``package.module:factory``.
MODELS: Registry[str] = Registry("model")

for _name, _factory in {
    "mlp": "small:mlp",
    "cnn-small": "small:cnn_small",
    "resnet32": "cifar_resnets:resnet32",
    "wrn28-10": "cifar_resnets:wrn28_10",
    "resnet18": "torchvision_models:resnet18",
    "resnet34": "torchvision_models:resnet34",
    "resnet50": "torchvision_models:resnet50",
    "densenet121": "torchvision_models:densenet121",
    "efficientnet_b2": "torchvision_models:efficientnet_b2",
    "efficientnet_b3": "torchvision_models:efficientnet_b3",
    "efficientnet_b4": "torchvision_models:efficientnet_b4",
}.items():
    MODELS.register(_name)(f"{__package__}.{_factory}")

# The names real model code gives the class count, input channels and image size.
CLASS_ARGS = ("num_classes", "n_classes", "nclasses", "num_class", "n_class", "classes",
              "labels", "num_labels", "n_labels", "class_num")
CHANNEL_ARGS = ("in_channels", "in_chans", "in_ch", "in_channel", "input_channels", "n_channels",
                "num_channels", "channels")
SIZE_ARGS = ("image_size", "img_size", "im_size", "imsize")
# timm arguments that would fetch or read weights: they come from the checkpoint, never a hub or path.
TIMM_WEIGHT_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def is_import_path(arch: str) -> bool:
    """``package.module:factory`` or ``timm:NAME``: naming it imports (runs) code."""
    return ":" in arch


def is_plain_data(value: Any) -> bool:
    """JSON-like: str, int, float, bool, None, and lists/dicts (str keys) of those, exactly."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) in (list, tuple):
        return all(is_plain_data(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain_data(v) for k, v in value.items())
    return False


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored in every checkpoint.

    arch: registry name, ``timm:NAME`` or ``package.module:factory``.
    num_classes / in_channels / image_size: follow the data set (image_size in pixels, square).
    kwargs: extra factory arguments (e.g. ``{"small_input": true}``), JSON-like data only.
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
        """Rebuild a stored spec (a stranger's data): every field must have its plain type."""
        kwargs = d.get("kwargs") or {}
        valid = {"arch": type(d.get("arch")) is str, "kwargs": type(kwargs) is dict and is_plain_data(kwargs)}
        valid.update({k: type(d.get(k, 1)) is int for k in ("num_classes", "in_channels", "image_size")})
        wrong = [k for k, ok in valid.items() if not ok]
        if wrong:
            raise UserError(f"the stored model spec has invalid {', '.join(wrong)} (only plain JSON-like "
                            "data is accepted); the file was altered or not written by alignsam-diag.")
        return cls(**{k: d[k] for k in ("arch", "num_classes", "in_channels", "image_size") if k in d},
                   kwargs=dict(kwargs))


def _timm_factory(name: str) -> ModelFactory:
    try:
        import timm
    except ImportError:
        raise UserError(f"--arch timm:{name} needs timm; install it with `pip install timm`.") from None
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r}; `python -c 'import timm; print(timm.list_models())'` lists them.")

    def build(num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        fetching = [k for k in TIMM_WEIGHT_ARGS if k in kwargs]
        if fetching:
            raise UserError(f"--arch timm:{name}: {', '.join(fetching)} cannot be set; the weights come "
                            "from the checkpoint, never from a hub or another file.")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return build


def _import_factory(path: str) -> ModelFactory:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise OptionError("arch", path, f"cannot import {attr!r} from {module_name!r} ({err}); "
                          "give package.module:factory on your PYTHONPATH.") from None
    if not callable(factory):
        raise OptionError("arch", path, f"{attr!r} is a {type(factory).__name__}, not a function or class.")
    return factory


def resolve_factory(arch: str) -> ModelFactory:
    if arch.startswith("timm:"):
        return _timm_factory(arch[len("timm:"):])
    return _import_factory(arch if is_import_path(arch) else MODELS.get(arch))


def _signature(factory: ModelFactory) -> Optional[inspect.Signature]:
    """The factory's signature (a class: its ``__init__``'s); None when Python cannot tell."""
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def factory_arguments(factory: ModelFactory, spec: ModelSpec) -> dict[str, Any]:
    """The keyword arguments ``factory`` gets for ``spec``: the data's values under the names its
    signature declares (see the module docstring), then ``spec.kwargs``, which always win."""
    signature = _signature(factory)
    named = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] if signature else []
    open_ended = signature is None or any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    inferred: dict[str, Any] = {}
    for aliases, value in ((CLASS_ARGS, spec.num_classes), (CHANNEL_ARGS, spec.in_channels),
                           (SIZE_ARGS, spec.image_size)):
        if any(a in spec.kwargs for a in aliases):
            continue
        name = next((a for a in aliases if a in named), None)
        if name is None and aliases is CLASS_ARGS and open_ended:
            name = "num_classes"
        if name is not None:
            inferred[name] = value
    arguments = {**inferred, **spec.kwargs}
    if signature is not None:
        try:
            signature.bind(**arguments)
        except TypeError as err:
            raise UserError(f"--arch {spec.arch} with --arch-kwargs {spec.kwargs}: {err}; it takes "
                            f"{', '.join(named) or 'no keyword arguments'}.") from None
    return arguments


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec`` with fresh (seed-dependent) weights."""
    from torch import nn

    if spec.num_classes < 1:
        raise OptionError("num_classes", spec.num_classes, "a classifier needs at least 1 class.")
    factory = resolve_factory(spec.arch)
    arguments = factory_arguments(factory, spec)
    failed = f"--arch {spec.arch} with --arch-kwargs {spec.kwargs}"
    try:
        with warnings.catch_warnings():  # empty layers are refused below, with a clearer line
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            model = factory(**arguments)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as err:
        reason = first_line(err)
        raise UserError(f"{failed}: the model cannot be built ({reason}); check --arch-kwargs.") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec.arch}: the factory returned {type(model).__name__}, not a torch.nn.Module.")
    empty = next((f"{n} {tuple(p.shape)}" for n, p in model.named_parameters() if p.numel() == 0), None)
    if empty:
        raise UserError(f"{failed}: the model has an empty layer ({empty}); check --arch-kwargs.")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
