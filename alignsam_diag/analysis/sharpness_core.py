"""What the worst-case and average-case sharpness measures share: their options, the groups of
m samples (m-sharpness), the model held at perturbed points and evaluated there, seeded draws,
and the aggregation of per-group values into one :class:`SharpnessEstimate`.

Sharpness of a group g of samples at radius ρ is S_g = L_g(w + δ_g) − L_g(w) (worst-case: δ_g
maximises it over the ball; average-case: its mean over random δ). The m-sharpness of all N
samples is Σ_g (n_g / N) S_g over consecutive groups of m samples (SAM's m; the last group may
be smaller and weighs less); m = N is the plain measure.

While a :class:`PerturbedModel` is open the model is in eval mode (dropout off) and BatchNorm
uses its stored statistics (``bn="eval"``) or the statistics of each forward chunk without
updating the stored ones (``bn="train"``, as the reference code's train mode evaluates); on exit
every parameter, buffer and training flag is bit-identical to what it was.
"""

from __future__ import annotations

import hashlib
import math
import types
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import OptionError, UserError
from ..store.sharpness import SharpnessEstimate
from .balls import NORMS, Ball
from .curvature import Batch, LossFn, select_parameters

MEASURES = ("worst", "average")
BN_MODES = ("eval", "train")
SPEED_ONLY = ("draws_per_pass",)  # options that change how the measures are computed, not their values


@dataclass
class SharpnessOptions:
    """Settings of the sharpness measures (the radius ρ is given per call).

    norm: "l2" or "linf" — the ball of the worst case; for the average case the draws are
        Gaussian N(0, ρ²I) (l2) or uniform in [−ρ, ρ]^P (linf), as the reference code's two.
    adaptive: the ball (and the draws) scaled elementwise by |w|.
    m: samples per group (m-sharpness); None: all samples in one group (the plain measure).
    steps, restarts: ascent steps per restart and random restarts of the worst case (each
        group keeps its best restart). momentum: the weight α of the new projected point
        (δ ← α·z + (1 − α)·δ_prev, the reference's 0.75). step_size: the first step is
        step_size·ρ (the reference's 2ρ), halved at checkpoints that improved too little.
    draws: random perturbations per group of the average case. seed: of the random starts
        and draws (the same δ for every checkpoint of one architecture, and for every ρ up to
        the factor ρ). bn: "eval" or "train" (see the module docstring). params: name patterns
        of the perturbed parameters (None: all trainable ones; see :func:`.curvature.select_parameters`).
    draws_per_pass: random draws evaluated per forward pass (vmap); None: chosen by timing.
        Speed only (equal results up to rounding), not stored.
    """

    norm: str = "l2"
    adaptive: bool = False
    m: Optional[int] = None
    steps: int = 20
    restarts: int = 1
    draws: int = 20
    seed: int = 0
    bn: str = "eval"
    params: Optional[list[str]] = None
    momentum: float = 0.75
    step_size: float = 2.0
    draws_per_pass: Optional[int] = None

    def validate(self) -> None:
        """Raise a one-line :class:`OptionError` for the first invalid option."""
        if self.norm not in NORMS:
            raise OptionError("norm", self.norm, f"choose {' or '.join(NORMS)}.")
        if self.bn not in BN_MODES:
            raise OptionError("bn", self.bn, "choose eval (stored BatchNorm statistics) or train (batch statistics).")
        for name in ("steps", "restarts", "m", "draws_per_pass"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(name, value, "must be at least 1.")
        if self.draws < 2:
            raise OptionError("draws", self.draws, "need at least 2 draws for a standard error.")
        if not 0 < self.momentum <= 1:
            raise OptionError("momentum", self.momentum, "must be in (0, 1].")
        if not self.step_size > 0:
            raise OptionError("step_size", self.step_size, "must be positive.")

    def stored(self) -> dict[str, object]:
        """The options that determine the results, except those that key a result row (norm,
        adaptive, m): stored once per result file and compared on reruns."""
        return {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY + ("norm", "adaptive", "m")}


def check_rho(rho: float) -> None:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise OptionError("rho", rho, "every radius must be a positive number.")


def sample_groups(batches: Sequence[Batch], m: Optional[int]) -> list[list[Batch]]:
    """The samples of ``batches`` (in order) as consecutive groups of ``m`` (None: one group of
    all), each a list of forward chunks of at most the largest given batch's size."""
    if not batches:
        raise UserError("sharpness needs at least one batch of samples.")
    if m is None:
        return [list(batches)]
    chunk = max(len(y) for _, y in batches)
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    groups = []
    for start in range(0, len(y), m):
        gx, gy = x[start:start + m], y[start:start + m]
        groups.append([(gx[i:i + chunk], gy[i:i + chunk]) for i in range(0, len(gy), chunk)])
    return groups


def generator(device: torch.device, seed: int, *keys: object) -> torch.Generator:
    """A generator on ``device`` seeded by ``seed`` and ``keys`` (e.g. "draw", group, index):
    the same numbers for the same keys, independent streams for different ones."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _batchnorm_with_batch_statistics(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm (the statistics of ``x``) that leaves the stored statistics alone."""
    return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


@dataclass
class Evaluation:
    """Mean loss and error (fractions) of one group at one point, float64 on the device, and the
    gradient (P,) over the perturbed parameters when it was asked for."""

    loss: torch.Tensor
    error: torch.Tensor
    grad: Optional[torch.Tensor] = None


class PerturbedModel:
    """The model at w + δ for flat perturbations δ (P,) of the parameters ``params`` selects.

    A context manager: on entry it saves every parameter and buffer and every module's training
    flag, switches to eval mode and, with ``bn="train"``, makes each BatchNorm layer use batch
    statistics; on exit (also after an error) it writes them all back exactly. Points are
    written into the model's own parameters (:meth:`move_to`); :meth:`batched_forward` instead
    evaluates K points in one pass with ``torch.func`` and leaves the parameters alone.
    """

    def __init__(self, model: nn.Module, params: Optional[Sequence[str]], bn: str, loss_fn: LossFn) -> None:
        self.model, self.bn, self.loss_fn = model, bn, loss_fn
        selected = select_parameters(model, params)
        self.names = list(selected)
        self.params = list(selected.values())
        self.sizes = [p.numel() for p in self.params]
        self.device = self.params[0].device
        self.origin = torch.cat([p.detach().reshape(-1) for p in self.params])  # w (P,)

    def ball(self, norm: str, rho: float, adaptive: bool) -> Ball:
        """The perturbation set around w: standard, or scaled by |w| when ``adaptive``."""
        return Ball(norm, rho, self.origin.abs() if adaptive else None)

    def __enter__(self) -> "PerturbedModel":
        self._saved = [(t, t.detach().clone()) for t in (*self.model.parameters(), *self.model.buffers())]
        self._flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self._patched = []
        if self.bn == "train":
            self._patched = [m for m in self.model.modules() if isinstance(m, _BatchNorm) and "forward" not in vars(m)]
            for m in self._patched:
                m.forward = types.MethodType(_batchnorm_with_batch_statistics, m)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self._patched:
            del m.forward
        with torch.no_grad():
            for tensor, saved in self._saved:
                tensor.copy_(saved)
        for module, training in self._flags:
            module.training = training

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat (P,) vector as views shaped like the perturbed parameters."""
        return [chunk.view_as(p) for chunk, p in zip(flat.split(self.sizes), self.params)]

    def move_to(self, delta: torch.Tensor) -> None:
        """Write w + δ into the model's parameters."""
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.views(self.origin + delta))

    def evaluate(self, chunks: Sequence[Batch], with_grad: bool = False) -> Evaluation:
        """Loss and error of the group ``chunks`` at the model's current parameters (their
        size-weighted means), with the gradient over the perturbed parameters if asked."""
        count = sum(len(y) for _, y in chunks)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.int64, device=self.device)
        grads: Optional[list[torch.Tensor]] = None
        for x, y in chunks:
            with torch.set_grad_enabled(with_grad):
                out = self.model(x)
                chunk_loss = self.loss_fn(out, y) * (len(y) / count)
            if with_grad:
                g = torch.autograd.grad(chunk_loss, self.params, materialize_grads=True)
                if grads is None:
                    grads = list(g)
                else:
                    torch._foreach_add_(grads, g)
            loss += chunk_loss.detach().double()
            wrong += (out.detach().argmax(1) != y).sum()
        grad = torch.cat([g.reshape(-1) for g in grads]) if grads is not None else None
        return Evaluation(loss, wrong.double() / count, grad)

    def batched_forward(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(points (K, P) flat parameters of the perturbed scope, x) -> outputs (K, B, ...), the
        other parameters and the buffers as they are."""
        chosen = set(self.names)
        fixed = {n: t for n, t in (*self.model.named_parameters(), *self.model.named_buffers()) if n not in chosen}

        def forward(point: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.model, {**dict(zip(self.names, self.views(point))), **fixed}, (x,))

        return torch.vmap(forward, in_dims=(0, None))

    def evaluate_points(self, chunks: Sequence[Batch], points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses and errors (each (K,), float64) of the group at the K points (K, P) w + δ_k, in
        one forward pass per chunk (vmap), without gradients."""
        forward = self.batched_forward()
        loss_of = torch.vmap(self.loss_fn, in_dims=(0, None))
        count = sum(len(y) for _, y in chunks)
        loss = torch.zeros(len(points), dtype=torch.float64, device=self.device)
        wrong = torch.zeros(len(points), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for x, y in chunks:
                out = forward(points, x)
                loss += loss_of(out, y).double() * (len(y) / count)
                wrong += (out.argmax(-1) != y).sum(-1)
        return loss, wrong.double() / count


@dataclass
class GroupValue:
    """One group's result: n samples; base loss and error at w; loss and error at the chosen
    (worst-case) or mean over draws of the perturbed points (average-case) with their standard
    errors over draws (NaN for worst-case); the maximiser's size and the maximiser itself."""

    samples: int
    base_loss: float
    base_error: float
    loss: float
    error: float
    loss_stderr: float = float("nan")
    error_stderr: float = float("nan")
    delta_norm: float = float("nan")
    delta: Optional[torch.Tensor] = None


def _weighted_stderr(values: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of Σ w_g v_g over groups (weights summing to 1) as a sample estimate: NaN
    for a single group."""
    if len(values) < 2:
        return float("nan")
    mean = float((weights * values).sum())
    return float(np.sqrt((weights ** 2 * (values - mean) ** 2).sum() * len(values) / (len(values) - 1)))


def aggregate(groups: Sequence[GroupValue], measure: str, m: Optional[int], seconds: float,
              ascent_steps: int = 0, draws: int = 0) -> tuple[SharpnessEstimate, list[Optional[torch.Tensor]]]:
    """The m-sharpness estimate from per-group values (weights n_g / N), and the groups'
    maximisers; ``m`` as asked (None: all samples), stored as the samples per group (≤ N).

    Average-case standard errors combine those of the groups (√Σ w_g² se_g²); worst-case ones
    are over the groups (NaN for a single group)."""
    n = np.array([g.samples for g in groups], dtype=float)
    w = n / n.sum()
    loss_inc = np.array([g.loss - g.base_loss for g in groups])
    err_inc = np.array([g.error - g.base_error for g in groups])
    if measure == "average":
        loss_se = float(np.sqrt((w ** 2 * np.array([g.loss_stderr for g in groups]) ** 2).sum()))
        err_se = float(np.sqrt((w ** 2 * np.array([g.error_stderr for g in groups]) ** 2).sum()))
    else:
        loss_se, err_se = _weighted_stderr(loss_inc, w), _weighted_stderr(err_inc, w)
    norms = [g.delta_norm for g in groups if not math.isnan(g.delta_norm)]
    samples = int(n.sum())
    estimate = SharpnessEstimate(
        loss_increase=float((w * loss_inc).sum()), loss_stderr=loss_se,
        error_increase=float((w * err_inc).sum()), error_stderr=err_se,
        base_loss=float((w * np.array([g.base_loss for g in groups])).sum()),
        base_error=float((w * np.array([g.base_error for g in groups])).sum()),
        samples=samples, m=min(m or samples, samples), groups=len(groups), ascent_steps=ascent_steps, draws=draws,
        delta_norm=max(norms) if norms else float("nan"), seconds=seconds)
    return estimate, [g.delta for g in groups]


@dataclass
class MeasureResult:
    """What a measure function returns: the estimate, and per group the maximiser δ (P,) over the
    perturbed parameters (worst-case with ``keep_delta``; else None) in ``names``' order."""

    estimate: SharpnessEstimate
    names: list[str]
    deltas: list[Optional[torch.Tensor]] = field(default_factory=list)
