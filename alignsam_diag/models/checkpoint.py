"""Checkpoint save/load: ours, and third-party files.

Our checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they load
with ``torch.load(weights_only=True)``. Third-party files may be plain state dicts
(.pt/.pth/.bin), safetensors, Lightning ``.ckpt`` (nested ``state_dict``, ``model.`` prefix) or
DDP-wrapped (``module.`` prefix). Full unpickling, which can run arbitrary code, happens only
with ``trust=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from .registry import ModelSpec, build_model

FORMAT = "alignsam-diag/1"
PREFIXES = ("", "module.", "model.", "model.module.", "_orig_mod.", "module._orig_mod.", "net.", "backbone.")


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a file.

    model: the module with the file's weights (on the requested device, eval mode).
    spec: how to rebuild it. data: the training data spec stored by ``train`` (None otherwise).
    meta: everything else the file holds (epoch, step, metrics, optimizer, history, version...).
    source: "alignsam-diag", "lightning", "state-dict" or "safetensors".
    """

    model: nn.Module
    spec: ModelSpec
    data: Optional[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "state-dict"


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (plus format and version tags) atomically: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "version": __version__, **payload}, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_file(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict without building a model.

    safetensors files load as their tensor dict; anything else through ``torch.load`` with
    ``weights_only=True`` unless ``trust``. Errors become one-line :class:`UserError`s.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path}: not a readable safetensors file ({err}).") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if trust:
            raise UserError(f"{path}: cannot unpickle ({err}).") from None
        raise UserError(f"{path}: refused to unpickle objects that could run code "
                        "(torch.load weights_only=True). If you trust where the file comes from, "
                        "pass --trust-checkpoint.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({reason}).") from None
    if isinstance(obj, nn.Module):  # a whole pickled model (trusted files only)
        return {"state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict or checkpoint dict.")
    return obj


def _tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and bool(d) and all(torch.is_tensor(v) for v in d.values())


def split_checkpoint(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Find the model state dict inside a loaded file: (state_dict, source, other entries)."""
    if obj.get("format") == FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return obj["state_dict"], "alignsam-diag", meta
    if _tensor_dict(obj.get("state_dict")):
        source = "lightning" if any(k.startswith("pytorch-lightning") for k in obj) else "state-dict"
        return obj["state_dict"], source, {k: v for k, v in obj.items() if k != "state_dict"}
    for key in ("model", "model_state_dict", "net", "ema"):
        if _tensor_dict(obj.get(key)):
            return obj[key], "state-dict", {k: v for k, v in obj.items() if k != key}
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError("the file holds no tensors that look like model weights.")
    return tensors, "state-dict", {k: v for k, v in obj.items() if not torch.is_tensor(v)}


def strip_prefix(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefix (``module.``, ``model.``, ...) that makes most keys match."""
    def matched(prefix: str) -> int:
        return sum(k[len(prefix):] in model_keys for k in state if k.startswith(prefix))
    best = max(PREFIXES, key=matched)
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)} if matched(best) else dict(state)


def _first(items: list[str], n: int = 3) -> str:
    extra = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + extra


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> None:
    """Load ``state`` strictly, raising one clear error that names the first offenders."""
    own = model.state_dict()
    state = strip_prefix(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_first(shapes)}")
    if problems:
        raise UserError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}. "
                        "Check --arch, --num-classes and --arch-kwargs.")
    model.load_state_dict(state)


def infer_num_classes(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Rows of the last 2-D weight in the file (the classifier head), if there is one."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def infer_in_channels(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Input channels of the first 4-D (conv) weight in the file, if there is one."""
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    return int(convs[0].shape[1]) if convs else None


def load_checkpoint(path: str | os.PathLike, arch: Optional[str] = None, num_classes: Optional[int] = None,
                    arch_kwargs: Optional[dict[str, Any]] = None, trust: bool = False,
                    device: str | torch.device = "cpu", in_channels: Optional[int] = None,
                    image_size: Optional[int] = None) -> LoadedCheckpoint:
    """Rebuild the model stored in ``path``.

    Our checkpoints carry their model spec; ``arch``/``num_classes``/``arch_kwargs`` override it
    or, for third-party files, supply it (the class count and input channels are read from the
    weights when not given).
    """
    obj = read_file(path, trust)
    state, source, meta = split_checkpoint(obj)
    stored = meta.get("model")
    if isinstance(stored, Mapping) and "arch" in stored:
        spec = ModelSpec.from_dict(dict(stored))
    elif arch is None:
        raise UserError(f"{path}: the file carries no model spec; pass --arch NAME "
                        "(and --num-classes N if the head cannot be read from the weights).")
    else:
        spec = ModelSpec(arch, num_classes or infer_num_classes(state) or 0,
                         in_channels or infer_in_channels(state) or 3, image_size or 32)
    if arch is not None:
        spec.arch = arch
    if num_classes is not None:
        spec.num_classes = num_classes
    if arch_kwargs:
        spec.kwargs = {**spec.kwargs, **arch_kwargs}
    if spec.num_classes < 1:
        raise UserError(f"{path}: cannot tell the number of classes; pass --num-classes N.")
    model = build_model(spec)
    load_state(model, state, spec.arch)
    model.to(device).eval()
    data = meta.get("data") if isinstance(meta.get("data"), Mapping) else None
    return LoadedCheckpoint(model, spec, dict(data) if data else None, meta, source)
