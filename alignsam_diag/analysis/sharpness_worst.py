"""Worst-case sharpness max_{δ ∈ B} L(w + δ) − L(w) by projected gradient ascent, per group of m
samples (see :mod:`.sharpness_core`), as the public reference code of Andriushchenko et al. 2023
(``sharpness.py``, ``eval_APGD_sharpness``) computes it, without its slips.

Per group and restart, from a random start δ_0 in the ball B (:meth:`.balls.Ball.random_point`):

    z_{k+1} = P_B(δ_k + η_k · d(∇L(w + δ_k)))        d: a ⊙ g/‖g‖ (ℓ2) or a ⊙ sign(g) (ℓ∞)
    δ_{k+1} = α z_{k+1} + (1 − α) δ_{k−1}            α = 0.75 (the reference code's averaging)

with η_0 = 2ρ, halved at the reference's checkpoints (22 %, then ever smaller shares of the
steps) when fewer than 75 % of the steps since the last checkpoint raised the best loss, or when
neither the step nor the best loss changed since it; the iterate then goes back to the best
point. δ_{k+1} is a convex combination of points of B, so every point evaluated is in B. The
value is the largest loss met at any evaluated point (the error is the error at that point),
best over restarts. Unlike the reference, the loss at δ_k comes from the same forward pass as
its gradient (one forward+backward per step, plus per group one forward at w and per restart one
for the last iterate), the return to the best point restores the perturbation itself (the reference reloads
the weights but keeps stepping from the current perturbation), the ℓ2 start lies in the ball
(the reference's lies ρ√P away), and the ellipsoid projection is exact
(:func:`.balls.project_ellipsoid`; the reference bisects to 1e-5).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import ProgressFn, report
from .balls import Ball
from .curvature import Batch, LossFn
from .sharpness_core import GroupValue, MeasureResult, PerturbedModel, SharpnessOptions, aggregate, check_rho, \
    generator, sample_groups

MIN_UPDATE_RATIO = 0.75  # the reference's share of improving steps below which the step size halves


def step_checkpoints(steps: int) -> set[int]:
    """The step indices (0-based) at which the step size may halve: the reference's schedule,
    at the shares p_0 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) of ``steps``."""
    shares, marks = [0.0, 0.22], [0, math.ceil(steps * 0.22)]
    while marks[-1] < steps and marks[-1] != marks[-2]:
        shares.append(shares[-1] + max(shares[-1] - shares[-2] - 0.03, 0.06))
        marks.append(math.ceil(shares[-1] * steps))
    return set(marks[1:])


@dataclass
class _Best:
    """The best point met so far: loss and error there, δ and the gradient at w + δ (None until
    needed, for the point w, whose loss comes from a forward pass only)."""

    loss: float
    error: float
    delta: torch.Tensor
    grad: Optional[torch.Tensor]


def _restart(scope: PerturbedModel, chunks: Sequence[Batch], ball: Ball, start: _Best, delta: torch.Tensor,
             options: SharpnessOptions, tick: Callable[[], None]) -> _Best:
    """One restart of the ascent from ``delta``; ``start`` is the point at w (δ = 0)."""
    marks = step_checkpoints(options.steps)
    best = start
    previous = delta.clone()
    step = options.step_size * ball.rho
    last_step, last_best, last_mark, improved = step, best.loss, 0, 0
    alpha = options.momentum
    for i in range(options.steps):
        scope.move_to(delta)
        here = scope.evaluate(chunks, with_grad=True)
        loss, grad = float(here.loss), here.grad
        if loss > best.loss:
            best = _Best(loss, float(here.error), delta.clone(), grad)
            improved += 1
        if i in marks:
            halve = improved < MIN_UPDATE_RATIO * (i - last_mark) or (last_step == step and last_best == best.loss)
            last_step, last_best, last_mark, improved = step, best.loss, i, 0
            if halve:
                step *= 0.5
                if best.grad is None:  # no step has beaten w yet: its gradient, once
                    scope.move_to(best.delta)
                    best.grad = scope.evaluate(chunks, with_grad=True).grad
                delta, grad, previous = best.delta.clone(), best.grad, best.delta.clone()
        z = ball.project(delta + step * ball.ascent_direction(grad))
        delta, previous = alpha * z + (1 - alpha) * previous, delta
        tick()
    scope.move_to(delta)
    last = scope.evaluate(chunks)
    if float(last.loss) > best.loss:
        best = _Best(float(last.loss), float(last.error), delta.clone(), None)
    return best


def worst_case_sharpness(model: nn.Module, batches: Sequence[Batch], rho: float, options: SharpnessOptions,
                         loss_fn: LossFn = F.cross_entropy, keep_delta: bool = False,
                         progress: Optional[ProgressFn] = None) -> MeasureResult:
    """Worst-case m-sharpness of ``model`` at radius ``rho`` on the fixed ``batches``.

    The ball is ``options.norm`` (adaptive: scaled by |w| of the perturbed parameters); see the
    module docstring for the ascent. ``keep_delta`` returns each group's maximiser (P,) over the
    perturbed parameters. The model, its buffers and modes are bit-identical afterwards.
    Progress: task "worst-case", one unit per ascent step.
    """
    options.validate()
    check_rho(rho)
    started = time.perf_counter()
    groups = sample_groups(batches, options.m)
    total, done = len(groups) * options.restarts * options.steps, 0
    values = []

    def tick() -> None:
        nonlocal done
        done += 1
        report(progress, "worst-case", done, total, log=None, rho=rho)

    with PerturbedModel(model, options.params, options.bn, loss_fn) as scope:
        ball = scope.ball(options.norm, rho, options.adaptive)
        zero = torch.zeros_like(scope.origin)
        for index, chunks in enumerate(groups):
            scope.move_to(zero)
            base = scope.evaluate(chunks)
            start = _Best(float(base.loss), float(base.error), zero, None)
            best = start
            for restart in range(options.restarts):
                delta = ball.random_point(generator(scope.device, options.seed, "worst", index, restart), zero)
                found = _restart(scope, chunks, ball, start, delta, options, tick)
                best = found if found.loss > best.loss else best
            values.append(GroupValue(sum(len(y) for _, y in chunks), start.loss, start.error, best.loss, best.error,
                                     delta_norm=ball.size(best.delta),
                                     delta=best.delta.clone() if keep_delta else None))
        names = scope.names
    estimate, deltas = aggregate(values, "worst", options.m, time.perf_counter() - started, ascent_steps=total)
    return MeasureResult(estimate, names, deltas)
