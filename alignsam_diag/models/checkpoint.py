"""Checkpoint save/load: ours, and third-party files.

Our format is defined once, by :class:`Checkpoint` (format ``alignsam-diag/1``): ``train`` writes
it, and ``inspect``, the analyses (:func:`load_checkpoint`) and ``train --resume`` read it back
through the same dataclass; a file of a newer format is refused with one line saying to
upgrade. On disk it is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``. Third-party files may be plain state dicts
(.pt/.pth/.bin), safetensors, Lightning ``.ckpt`` (nested ``state_dict``) or whole pickled
models, with any wrapper prefix (``module.``, ``model.``, ``_orig_mod.``, nested), found by
matching the file's keys against the model's own. Full unpickling, which can run arbitrary
code, happens only with ``trust=True`` (``--trust-checkpoint``).

What a file *says* is data from a stranger: a stored import-path architecture is imported only
when the user names it too (or trusts the file), and stored factory arguments must be plain
JSON-like values. Shapes the user does not give are read from the weights at the model's stem
and head, never from the file's key order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import typing
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .. import __version__
from ..errors import UserError, first_line
from ..files import atomic_write
from .registry import ModelSpec, build_model, is_import_path

FORMAT_NAME = "alignsam-diag"
FORMAT_VERSION = 1  # raise it when a change of :class:`Checkpoint` would mislead an older reader
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "ema")  # where files keep the weights
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# How torch's weights_only unpickler names a type it refuses to import ("... GLOBAL posix.system
# whose module ...", "... GLOBAL mypkg.Net was not an allowed global ..."); other errors mean damage.
REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:whose|was)")
PROBE_CLASSES = 10  # classes of the first build of a third-party model; the head's real size is then read


class NewerFormatError(UserError):
    """A checkpoint written in a format newer than this alignsam-diag reads."""


def format_version(obj: Mapping[str, Any]) -> Optional[int]:
    """The version N of our format (``alignsam-diag/N``) a loaded file declares; None for a file that
    is not ours (a third party's)."""
    tag = obj.get("format")
    if not (isinstance(tag, str) and tag.startswith(f"{FORMAT_NAME}/")):
        return None
    number = tag[len(FORMAT_NAME) + 1:]
    return int(number) if number.isdigit() else 0


def _field_type(hint: Any) -> type:
    """The plain type a stored field must have: ``Optional[dict[str, int]]`` -> dict."""
    if typing.get_origin(hint) is Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


@dataclass(kw_only=True)
class Checkpoint:
    """One of our checkpoint files (format :data:`FORMAT`), as ``train`` writes it each epoch.

    state_dict: the model's weights. model: how to rebuild it. data: the data spec
    (:meth:`~alignsam_diag.data.DataSpec.to_dict`: runtime-only options such as ``download`` are
    never stored). optimizer: the settings the run used, defaults written out
    (:meth:`alignsam_diag.train.Run.settings`). optimizer_state, scheduler_state, rng: what
    ``--resume`` restores. config: the run's resolved
    :class:`~alignsam_diag.train.TrainConfig` (its ``to_dict``). epoch, step: counted so far.
    metrics: the last epoch's row of ``history`` (per-epoch columns). version: of the
    alignsam-diag that wrote the file (stamped by :func:`save_checkpoint`, with the format). A
    field left as None is not written (files made by hand or by other tools may hold only
    ``state_dict`` and ``model``).
    """

    state_dict: dict[str, torch.Tensor]
    model: ModelSpec
    data: Optional[dict[str, Any]] = None
    optimizer: Optional[dict[str, Any]] = None
    optimizer_state: Optional[dict[str, Any]] = None
    scheduler_state: Optional[dict[str, Any]] = None
    config: Optional[dict[str, Any]] = None
    epoch: Optional[int] = None
    step: Optional[int] = None
    metrics: Optional[dict[str, float]] = None
    history: Optional[dict[str, list[float]]] = None
    rng: Optional[dict[str, Any]] = None
    version: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """Every field that is set, as stored (the file adds the format tag)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**{k: v for k, v in values.items() if v is not None}, "model": self.model.to_dict()}

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as stored (the model spec as a dict)."""
        return {k: v for k, v in self.to_dict().items() if k != "state_dict"}

    def save(self, path: str | os.PathLike) -> None:
        """Write the file atomically (:func:`save_checkpoint`)."""
        save_checkpoint(path, self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], path: str | os.PathLike) -> "Checkpoint":
        """Read a loaded file of ours (a stranger's data: every field is checked for its type; keys
        outside the format are ignored). A newer format is a :class:`NewerFormatError`, anything
        else that does not fit a one-line :class:`UserError` naming ``path``."""
        version = format_version(obj)
        if version is not None and version > FORMAT_VERSION:
            raise NewerFormatError(f"{path}: written by a newer alignsam-diag (format {version}); upgrade "
                                   f"alignsam-diag to read it (this one reads format {FORMAT_VERSION}).")
        if version is None:
            raise UserError(f"{path}: not a checkpoint written by alignsam-diag (it has no format tag {FORMAT!r}).")
        if version != FORMAT_VERSION:
            raise UserError(f"{path}: unknown checkpoint format {obj['format']!r}; this alignsam-diag reads {FORMAT}.")
        hints = typing.get_type_hints(cls)
        values = {name: obj[name] for name in hints if obj.get(name) is not None}
        problems = [f"no {name}" for name in ("state_dict", "model") if name not in values]
        problems += [f"invalid {name}" for name, value in values.items()
                     if not isinstance(value, dict if name == "model" else _field_type(hints[name]))
                     or (name == "state_dict" and not _tensor_dict(value))]
        if problems:
            raise UserError(f"{path}: an alignsam-diag checkpoint with {', '.join(problems)}; the file is "
                            "damaged or was altered.")
        try:
            values["model"] = ModelSpec.from_dict(values["model"])
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        return cls(**values)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Checkpoint":
        """Read one of our files (loaded with ``weights_only=True``)."""
        return cls.from_dict(read_file(path), path)


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a file.

    model: the module with the file's weights (on the requested device, eval mode).
    spec: how to rebuild it. data: the training data spec stored by ``train`` (None otherwise).
    meta: everything else the file holds (epoch, step, metrics, optimizer, history, version...).
    source: "alignsam-diag", "lightning", "state-dict" (also safetensors) or "pickled-model".
    record: the file as our format reads it (:class:`Checkpoint`), for ours; None otherwise.
    """

    model: nn.Module
    spec: ModelSpec
    data: Optional[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "state-dict"
    record: Optional[Checkpoint] = None

    @property
    def optimizer(self) -> Optional[str]:
        """The optimizer name ``train`` recorded (``meta["optimizer"]["name"]``), or None
        (third-party files, which may keep an optimizer state under that key)."""
        entry = self.meta.get("optimizer")
        name = entry.get("name") if isinstance(entry, Mapping) else None
        return name if isinstance(name, str) else None


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (plus format and version tags) atomically: the writer behind
    :meth:`Checkpoint.save`, and for payloads holding only some of its fields (temp file, fsync, rename:
    :func:`alignsam_diag.files.atomic_write`). A full disk raises a one-line
    :class:`~alignsam_diag.files.DiskFullError` and leaves the previous file as it was."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        # through a Python file object, so a refused write keeps its errno (ENOSPC, EFBIG)
        torch.save({"format": FORMAT, "version": __version__, **payload}, fh)


def _folder_hint(folder: Path) -> Path:
    """A checkpoint inside ``folder`` to suggest (its ``last.pt`` when there is one)."""
    found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    return folder / "last.pt" if (folder / "last.pt").is_file() or not found else found[0]


def _file_kind(path: Path) -> str:
    """``torch`` or ``safetensors`` from the file's first bytes; anything else is a one-line
    :class:`UserError` saying what the file is instead."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file; give a file inside it "
                        f"(e.g. {_folder_hint(path)}).")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file.")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror}); check its permissions.") from None
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # 8-byte header length, then JSON
        return "safetensors"
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # torch.save's zip, or its legacy pickle
        return "torch"
    if not head:
        raise UserError(f"{path}: the file is empty (an interrupted save or download); write or download it again.")
    if head.startswith(HDF5_SIGNATURE):
        raise UserError(f"{path}: is an HDF5 results file (written by eigs, landscape or train), not a model "
                        "checkpoint; give the .pt, .ckpt or .safetensors file of the model.")
    what = "a text file" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "in an unknown format"
    raise UserError(f"{path}: is {what}, not a PyTorch checkpoint; give a file written by torch.save "
                    "(.pt/.pth/.bin/.ckpt) or a .safetensors file.")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err)}); "
                        "it may be truncated: write or download it again.") from None


def _refused_import(err: pickle.UnpicklingError) -> bool:
    """Whether weights_only refused a well-formed ``module.name`` (a real refusal), not garbage
    from a damaged file."""
    match = REFUSED_GLOBAL.search(str(err))
    return bool(match) and all(part.isidentifier() for part in match.group(1).split("."))


def read_object(path: str | os.PathLike, trust: bool = False) -> Any:
    """The object a checkpoint file holds, as saved: a dict (of tensors, or a checkpoint), or
    with ``trust`` anything ``torch.save`` wrote, e.g. a whole model.

    safetensors files load as their tensor dict; anything else through ``torch.load`` with
    ``weights_only=True`` unless ``trust``. Errors become one-line :class:`UserError`\\ s; only a
    genuine weights_only refusal (a type that would be imported) suggests ``--trust-checkpoint``."""
    path = Path(path)
    if _file_kind(path) == "safetensors":
        return _read_safetensors(path)
    damaged = (f"{path}: the checkpoint is truncated or damaged (an interrupted save or download?); "
               "write or download it again.")
    try:
        with warnings.catch_warnings():  # torch's remarks on damaged pickles; the error says it
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.serialization")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if not trust and _refused_import(err):
            raise UserError(f"{path}: refused to unpickle objects that could run code "
                            "(torch.load weights_only=True). If you trust where the file comes from, "
                            "pass --trust-checkpoint.") from None
        raise UserError(damaged) from None
    except (ImportError, AttributeError) as err:  # trusted pickles name classes to import
        raise UserError(f"{path}: the pickled objects need code that cannot be imported here "
                        f"({first_line(err)}); put the module that defines them on PYTHONPATH.") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AssertionError):
        raise UserError(damaged) from None


def _as_dict(path: str | os.PathLike, obj: Any) -> dict[str, Any]:
    if isinstance(obj, nn.Module):  # a whole pickled model (trusted files only): its weights
        return {"state_dict": obj.state_dict()}
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict or checkpoint dict.")
    return obj


def read_file(path: str | os.PathLike, trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict without building a model (see :func:`read_object`;
    a whole pickled model gives ``{"state_dict": ...}``)."""
    return _as_dict(path, read_object(path, trust))


def _tensor_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and bool(d) and all(torch.is_tensor(v) for v in d.values())


def split_checkpoint(obj: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Find the model state dict inside a loaded third-party file: (state_dict, source, other entries)."""
    source = "lightning" if any(str(k).startswith("pytorch-lightning") for k in obj) else "state-dict"
    for key in STATE_KEYS:
        if _tensor_dict(obj.get(key)):
            return obj[key], source, {k: v for k, v in obj.items() if k != key}
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError("the file holds no tensors that look like model weights.")
    return tensors, source, {k: v for k, v in obj.items() if not torch.is_tensor(v)}


def wrapper_prefix(keys: Iterable[str], model_keys: set[str]) -> str:
    """The prefix of ``keys`` (``module.``, ``model._orig_mod.``, ... any nesting) whose removal
    makes the most of them keys of the model; ``""`` when none is needed (or nothing matches)."""
    votes: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                votes["".join(f"{p}." for p in parts[:i])] += 1
    return max(votes, key=lambda prefix: (votes[prefix], -len(prefix)), default="")


def strip_prefix(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """``state`` without its wrapper prefix (:func:`wrapper_prefix`); keys outside it (an EMA copy,
    a loss module's buffers) are dropped."""
    prefix = wrapper_prefix(state, model_keys)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


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
        raise UserError(f"the weights do not fit --arch {arch}: {'; '.join(problems)}. Check --arch, "
                        "--arch-kwargs, --num-classes and the input shape (--dataset, or --input-shape for inspect).")
    model.load_state_dict(state)


def stem_and_head(model: nn.Module) -> tuple[Optional[str], Optional[str]]:
    """Names of the model's stem (its first conv or linear layer, in module order) and head (its
    last linear layer, else its last conv): the layers whose weights tell the input channels and
    the class count."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    linears = [name for name, m in layers if isinstance(m, nn.Linear)]
    if not layers:
        return None, None
    return layers[0][0], (linears or [layers[-1][0]])[-1]


def square_input(features: int) -> dict[str, int]:
    """A linear stem's ``features`` as one- or three-channel square images (784 -> 1×28×28, 3072 ->
    3×32×32); at most one fits, since 1·s² = 3·t² has no whole solution. ``{}`` when neither does."""
    for channels in (1, 3):
        size = math.isqrt(features // channels)
        if size and channels * size * size == features:
            return {"in_channels": channels, "image_size": size}
    return {}


def guess_shapes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """What the file's weights say about the data, read at the model's own stem and head (so the
    file's key order does not matter): ``in_channels`` (a conv stem's input channels; a linear
    stem's inputs as square images, :func:`square_input`), ``image_size`` (linear stems only) and
    ``num_classes`` (the head's outputs). Only what can be read is returned."""
    prefix = wrapper_prefix(state, set(model.state_dict()))
    stem, head = stem_and_head(model)

    def weight(layer: Optional[str]) -> Optional[torch.Tensor]:
        """The file's weight of ``layer`` (``""``: the model itself is the layer)."""
        w = None if layer is None else state.get(f"{prefix}{layer}.weight" if layer else f"{prefix}weight")
        return w if torch.is_tensor(w) and w.dim() >= 2 else None

    guess: dict[str, int] = {}
    stem_weight, head_weight = weight(stem), weight(head)
    if stem_weight is not None:
        inputs = int(stem_weight.shape[1])
        guess.update(square_input(inputs) if isinstance(model.get_submodule(stem), nn.Linear)
                     else {"in_channels": inputs})
    if head_weight is not None:
        guess["num_classes"] = int(head_weight.shape[0])
    return guess


def check_stored_arch(path: str | os.PathLike, stored: str, named: Optional[str], trust: bool) -> None:
    """A file's own import-path architecture (``module:factory``, ``timm:NAME``) would run code when
    imported: allowed only when the user named the same one (``--arch``) or trusts the file."""
    if is_import_path(stored) and stored != named and not trust:
        raise UserError(f"{path}: the file names the import path {stored!r} as its architecture, and "
                        f"importing it would run code; if you trust it, name it yourself with --arch "
                        f"(exactly {stored!r}) or pass --trust-checkpoint.")


def _guessed_model(path: str | os.PathLike, state: Mapping[str, torch.Tensor], probe: ModelSpec,
                   given: dict[str, Optional[int]]) -> tuple[ModelSpec, nn.Module]:
    """Build ``probe`` (the given values, else placeholders), read the data's shape at its stem and
    head (:func:`guess_shapes`) for what was not given, and rebuild when that changed the spec."""
    model = build_model(probe)
    guess = guess_shapes(model, state)
    if given["num_classes"] is None and guess.get("num_classes") == 0:
        raise UserError(f"{path}: the head of the weights has 0 outputs, so the class count cannot be "
                        "read; pass --num-classes N.")
    values = {k: v if v is not None else guess.get(k, getattr(probe, k)) for k, v in given.items()}
    spec = ModelSpec(probe.arch, kwargs=probe.kwargs, **values)
    return spec, model if spec == probe else build_model(spec)


def _pickled_model(module: nn.Module, given: dict[str, Optional[int]]) -> LoadedCheckpoint:
    """A trusted whole-model pickle is the model itself; its spec describes it (class path, and the
    shapes read from its stem and head, else the given ones)."""
    guess = guess_shapes(module, module.state_dict())
    cls = type(module)
    values = {k: guess.get(k, v) for k, v in given.items()}
    spec = ModelSpec(f"{cls.__module__}:{cls.__qualname__}", values["num_classes"] or 0,
                     values["in_channels"] or 3, values["image_size"] or 32)
    return LoadedCheckpoint(module, spec, None, {}, "pickled-model")


def load_checkpoint(path: str | os.PathLike, arch: Optional[str] = None, num_classes: Optional[int] = None,
                    arch_kwargs: Optional[dict[str, Any]] = None, trust: bool = False,
                    device: str | torch.device = "cpu", in_channels: Optional[int] = None,
                    image_size: Optional[int] = None) -> LoadedCheckpoint:
    """Rebuild the model stored in ``path``.

    Our checkpoints (read as :class:`Checkpoint`) carry their model spec (used when ``arch`` is
    None or names the same architecture; ``num_classes``/``arch_kwargs`` override it). A stored
    import path is imported only if ``arch`` names it too or ``trust`` (:func:`check_stored_arch`). Other files need
    ``arch``; what is not given of ``num_classes``/``in_channels``/``image_size`` is read from the
    weights at the model's stem and head (:func:`guess_shapes`). A trusted whole-model pickle is
    used as it is unless ``arch`` is given.
    """
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    obj = read_object(path, trust)
    if isinstance(obj, nn.Module) and arch is None:
        return _pickled_model(obj.to(device).eval(), given)
    obj = _as_dict(path, obj)
    record = Checkpoint.from_dict(obj, path) if format_version(obj) is not None else None
    if record is not None:
        state, source, meta = record.state_dict, "alignsam-diag", record.metadata()
    else:
        state, source, meta = split_checkpoint(obj)
    stored = record.model if record is not None else None
    if stored is not None and arch in (None, stored.arch):
        check_stored_arch(path, stored.arch, arch, trust)
        spec = dataclasses.replace(stored, num_classes=stored.num_classes if num_classes is None else num_classes,
                                   kwargs={**stored.kwargs, **(arch_kwargs or {})})
        model = build_model(spec)
    elif arch is None:
        raise UserError(f"{path}: the file carries no model spec; pass --arch NAME "
                        "(and --num-classes N if the head cannot be read from the weights).")
    else:
        probe = ModelSpec(arch, PROBE_CLASSES if num_classes is None else num_classes, in_channels or 3,
                          image_size or 32, dict(arch_kwargs or {}))
        spec, model = _guessed_model(path, state, probe, given)
    load_state(model, state, spec.arch)
    model.to(device).eval()
    data = dict(record.data) if record is not None and record.data else None
    return LoadedCheckpoint(model, spec, data, meta, source, record)
