"""Directions in parameter space along which a loss landscape is drawn.

A :class:`Direction` holds one tensor per model parameter, in ``model.named_parameters()``
order, with the parameter's name and shape; parameters it does not move hold zeros. It may also
move floating-point buffers (BatchNorm's ``running_mean``/``running_var``): an interpolation
does, so that every point of the line carries the statistics that belong to it; integer
buffers (``num_batches_tracked``) never move.

Four sources:

- :func:`random_directions` — Li et al. (2018): a Gaussian tensor per parameter, drawn on the
  CPU from a seeded generator (the same seed gives the same draws on any device), then
  normalised to the model's weights: ``filter`` scales each output filter ``d_i`` (slice
  ``d[i]`` of a tensor with ≥ 2 dims) to ``‖w_i‖``, ``layer`` scales each tensor to ``‖w‖``,
  ``none`` keeps the raw draw. One-dimensional tensors (biases, BatchNorm) are zeroed
  (``ignore_biasbn``), or else — as in Li et al.'s ``net_plotter`` — set to the weights
  themselves under ``filter``/``layer`` normalisation.
- :func:`interpolation_direction` — the difference ``θ_end − θ_start`` between two checkpoints,
  floating-point buffers included (x = 1 is the other checkpoint exactly).
- :func:`eigenvector_directions` — top Hessian eigenvectors saved by ``eigs``;
- :func:`surface_directions` — the directions of an earlier landscape file.

:func:`directions_from_source` picks one by the ``--directions`` option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import OptionError, UserError
from ..landscape_types import NORMS, parse_directions
from ..store.landscape import read_landscape
from ..store.spectrum import eigenvectors_of

if TYPE_CHECKING:
    from ..models.registry import ModelSpec


@dataclass
class Direction:
    """names[i] is a parameter name, tensors[i] (float32) has that parameter's shape; ``buffers``
    maps the names of the floating-point buffers the direction moves to tensors of their shapes
    (empty: it moves parameters only)."""

    names: list[str]
    tensors: list[torch.Tensor]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def flat(self) -> torch.Tensor:
        """All entries as one float32 CPU vector, in ``names`` order, then the buffers' in theirs."""
        return torch.cat([t.detach().reshape(-1).float().cpu() for t in [*self.tensors, *self.buffers.values()]])

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> "Direction":
        return Direction(list(self.names), [t.to(device=device, dtype=dtype or t.dtype) for t in self.tensors],
                         {n: t.to(device=device, dtype=dtype or t.dtype) for n, t in self.buffers.items()})

    def norm(self) -> float:
        """Length in parameter space (the buffers' entries not counted)."""
        return float(torch.linalg.vector_norm(torch.cat([t.detach().reshape(-1).float().cpu() for t in self.tensors])))


def stack(directions: Sequence[Direction]) -> tuple[list[str], np.ndarray]:
    """The directions as the rows of one (len(directions), P) float32 array over one name list, as
    a landscape file stores them: the parameters, then every buffer any of them moves (zeros in a
    direction that does not move it). :func:`split_flat` reads a row back."""
    shapes = {n: t.shape for d in directions for n, t in d.buffers.items()}
    rows = [Direction(d.names, d.tensors, {n: d.buffers.get(n, torch.zeros(s)) for n, s in shapes.items()}).flat()
            for d in directions]
    return [*directions[0].names, *shapes], torch.stack(rows).numpy()


def moving_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a direction may move: the model's floating-point buffers that are part of its
    state dict (BatchNorm's running statistics; not ``num_batches_tracked``), by name."""
    persistent = model.state_dict(keep_vars=True)
    return {n: b for n, b in model.named_buffers() if b.is_floating_point() and n in persistent}


def parameter_shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, p.shape) for name, p in model.named_parameters()]


def split_flat(model: nn.Module, names: Sequence[str], vector: torch.Tensor | np.ndarray,
               source: str = "the stored direction") -> Direction:
    """The :class:`Direction` of ``model`` whose entries for ``names`` (in order) are ``vector``
    (length Σ numel over ``names``); the model's other parameters get zeros. Names of the model's
    floating-point buffers (see :func:`stack`) become the direction's ``buffers``."""
    vector = torch.as_tensor(np.asarray(vector), dtype=torch.float32)
    params = dict(parameter_shapes(model))
    shapes = {**{n: b.shape for n, b in moving_buffers(model).items()}, **params}
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise UserError(f"{source} names parameters the model does not have ({', '.join(unknown[:3])}); "
                        "it was made for another architecture.")
    expected = sum(shapes[n].numel() for n in names)
    if vector.numel() != expected:
        raise UserError(f"{source} has {vector.numel()} entries but the model's parameters "
                        f"{names[0]}…{names[-1]} have {expected}; it was made for another model.")
    pieces = {n: v.reshape(shapes[n]).clone()
              for n, v in zip(names, torch.split(vector, [shapes[n].numel() for n in names]))}
    return Direction(list(params), [pieces.get(n, torch.zeros(s)) for n, s in params.items()],
                     {n: v for n, v in pieces.items() if n not in params})


def _normalise(d: torch.Tensor, w: torch.Tensor, norm: str, ignore_biasbn: bool) -> torch.Tensor:
    """Li et al.'s ``normalize_directions_for_weights`` for one tensor (``d`` is changed in place)."""
    w = w.detach().float().cpu()
    if d.dim() <= 1:
        if ignore_biasbn:
            return d.zero_()
        return d if norm == "none" else d.copy_(w)
    if norm == "filter":
        d_rows, w_rows = d.view(d.shape[0], -1), w.reshape(w.shape[0], -1)
        d_rows.mul_((w_rows.norm(dim=1) / (d_rows.norm(dim=1) + 1e-10)).unsqueeze(1))
    elif norm == "layer":
        d.mul_(w.norm() / (d.norm() + 1e-10))
    return d


def random_directions(model: nn.Module, seed: int, count: int = 2, norm: str = "filter",
                      ignore_biasbn: bool = True) -> list[Direction]:
    """``count`` seeded random directions for ``model`` (on the CPU; see the module docstring).

    The Gaussian draws depend only on ``seed`` and the parameter shapes, so models of the same
    architecture (SGD, SAM, Align-SAM checkpoints) get the same draws, each normalised to its
    own weights. Direction k uses the generator after directions 0..k-1 were drawn."""
    if norm not in NORMS:
        raise OptionError("norm", norm, f"choose one of {', '.join(NORMS)}.")
    generator = torch.Generator().manual_seed(seed)
    named = list(model.named_parameters())
    directions = []
    for _ in range(count):
        tensors = [_normalise(torch.randn(p.shape, generator=generator), p, norm, ignore_biasbn) for _, p in named]
        directions.append(Direction([n for n, _ in named], tensors))
    return directions


def _difference(target: Mapping[str, torch.Tensor], name: str, own: torch.Tensor) -> torch.Tensor:
    """``target[name] − own`` (float32, CPU); a missing or misshapen entry is a UserError."""
    other = target.get(name)
    if other is None or other.shape != own.shape:
        raise UserError(f"the interpolation target has no {name} of shape {tuple(own.shape)}; "
                        "both checkpoints must have the same architecture.")
    return other.detach().float().cpu() - own.detach().float().cpu()


def interpolation_direction(model: nn.Module, target: Mapping[str, torch.Tensor]) -> Direction:
    """``θ_target − θ_model`` for every parameter of ``model`` and every floating-point buffer
    (:func:`moving_buffers`: BatchNorm running statistics); ``target`` maps the same names to
    tensors of the same shapes (e.g. another checkpoint's ``state_dict()``). So x = 1 on this
    direction is the target model exactly, running statistics included, and any x in between
    has the statistics interpolated as the weights are (``num_batches_tracked`` stays the
    model's; evaluation in eval mode does not read it)."""
    named = list(model.named_parameters())
    return Direction([n for n, _ in named], [_difference(target, n, p) for n, p in named],
                     {n: _difference(target, n, b) for n, b in moving_buffers(model).items()})


def checkpoint_loader(spec: ModelSpec, trust: bool = False) -> Callable[[str], nn.Module]:
    """``path -> model`` that rebuilds another checkpoint the way ``spec`` (a
    :class:`~alignsam_diag.models.ModelSpec`, e.g. the first checkpoint's) describes: the same
    architecture, factory arguments, class count and input shape, so the target of
    ``interpolate:`` loads like the first even from a plain state dict."""
    from ..models.checkpoint import load_checkpoint

    def load(path: str) -> nn.Module:
        return load_checkpoint(path, arch=spec.arch, num_classes=spec.num_classes, arch_kwargs=spec.kwargs,
                               trust=trust, in_channels=spec.in_channels, image_size=spec.image_size).model
    return load


def eigenvector_directions(model: nn.Module, path: str | os.PathLike, count: int = 2,
                           checkpoint: Optional[str] = None) -> list[Direction]:
    """The top ``count`` Hessian eigenvectors stored by ``eigs --save-vectors`` in ``path`` (unit
    length, so coordinates are distances in parameter space): those of ``checkpoint``, or of the
    file's only checkpoint."""
    names, vectors = eigenvectors_of(path, checkpoint)
    if vectors.shape[0] < count:
        raise UserError(f"{path}: holds {vectors.shape[0]} eigenvector(s) but {count} are needed; "
                        f"rerun eigs with --save-vectors and at least {count} eigenvalues.")
    return [split_flat(model, list(names), vectors[i], f"{path}: eigenvector {i + 1}") for i in range(count)]


def _same_file(a: Optional[str], b: Optional[str]) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def surface_directions(model: nn.Module, path: str | os.PathLike, count: int = 2, checkpoint: Optional[str] = None,
                       group: Optional[str] = None) -> list[Direction]:
    """The first ``count`` directions stored in the landscape file ``path``: those of the surface
    named ``group`` or computed for ``checkpoint``, else of the file's only surface."""
    stored = read_landscape(path)
    same = [g for g in stored.groups if g.name == group or _same_file(g.checkpoint, checkpoint)]
    if not same and len(stored.groups) > 1:
        raise UserError(f"{path} holds no surface of {checkpoint or group}; it holds "
                        f"{', '.join(g.checkpoint for g in stored.groups)}.")
    chosen = (same or stored.groups)[0]
    if chosen.directions is None or len(chosen.directions) < count:
        raise UserError(f"{path}: surface {chosen.name!r} holds no {count}-D directions yet.")
    return [split_flat(model, chosen.direction_names, row, f"{path}: {chosen.name}")
            for row in chosen.directions[:count]]


def directions_from_source(model: nn.Module, source: str, count: int, seed: int, norm: str = "filter",
                           ignore_biasbn: bool = True, checkpoint: Optional[str] = None,
                           group: Optional[str] = None,
                           load_target: Optional[Callable[[str], nn.Module]] = None) -> list[Direction]:
    """The ``count`` directions named by ``source`` (the ``--directions`` option, see
    :func:`~alignsam_diag.landscape_types.parse_directions`) — the one place where a source
    becomes arrays, reading the files it names:

    ``random`` — :func:`random_directions`;
    ``interpolate:CKPT`` — towards checkpoint CKPT, BatchNorm statistics included
    (:func:`interpolation_direction`), then (2-D) a seeded random direction; CKPT is loaded with
    ``load_target`` (e.g. :func:`checkpoint_loader`; default: the model spec stored in CKPT);
    ``eigs:FILE.h5`` — the top eigenvectors stored by ``eigs`` for ``checkpoint`` (or the
    file's only checkpoint);
    ``surface:FILE.h5`` — the directions stored in an earlier landscape file, to re-evaluate,
    refine or extend its surface: those of the surface named ``group`` or computed for
    ``checkpoint``, else of the file's only surface."""
    kind, argument = parse_directions(source)
    if kind == "interpolate":
        from ..models.checkpoint import load_checkpoint

        target = (load_target or (lambda path: load_checkpoint(path).model))(argument).state_dict()
        return [interpolation_direction(model, target)] + random_directions(model, seed, count - 1, norm, ignore_biasbn)
    if kind == "eigs":
        return eigenvector_directions(model, argument, count, checkpoint)
    if kind == "surface":
        return surface_directions(model, argument, count, checkpoint, group)
    return random_directions(model, seed, count, norm, ignore_biasbn)
