"""Average-case sharpness E_δ L(w + δ) − L(w), per group of m samples (see :mod:`.sharpness_core`),
with its standard error over the draws.

δ ~ N(0, ρ² I) (ℓ2) or uniform in [−ρ, ρ]^P (ℓ∞), multiplied elementwise by |w| when adaptive
(:meth:`.balls.Ball.noise`); each group gets its own ``draws`` perturbations, each seeded by
(seed, group, draw), so the numbers do not depend on how many are evaluated per pass. For
small ρ the ℓ2 value is ½ρ²·tr(H) + O(ρ⁴) whatever the gradient (DESIGN §10).

K draws are evaluated in one forward pass per chunk through ``torch.func.functional_call`` +
``vmap`` when that is faster than K passes (small models on a GPU, whose single pass does not
fill the device). On CUDA :class:`DrawsPerPass` decides it from the first group's own draws,
evaluated in blocks of 1, 2, 1, 8, 1 and timed: no pass is spent on timing alone, and each K is
compared with the single passes timed next to it, so that a busy moment of a shared machine does
not decide. On the CPU, where batching draws never paid, it evaluates one draw per pass.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError, first_line
from ..progress import ProgressFn, report
from .balls import Ball
from .curvature import Batch, LossFn
from .sharpness_core import GroupValue, MeasureResult, PerturbedModel, SharpnessOptions, aggregate, check_rho, \
    generator, sample_groups


class DrawsPerPass:
    """How many draws to evaluate per forward pass: ``fixed`` when given, else chosen from timed
    blocks of real draws (:data:`TRIAL` sizes, then the fastest K per draw — a K > 1 only when it
    takes at most ``gain`` × the time per draw of the single passes around it). The trial goes on
    to a larger K only while the last one paid so, and stops at 1 when a single pass lasts longer
    than ``long_forward_s`` or a K cannot run (``vmap`` refuses the model, memory).

    ``trial`` None: on CUDA only. On the CPU batching draws never paid (8 draws per pass cost
    1.1–1.5× eight single passes for an MLP and ``cnn-small``, 1.5–4× for larger CNNs), so there
    it takes 1 at once instead of spending the trial's slow blocks finding that out.
    """

    TRIAL = (1, 2, 1, 8, 1)

    def __init__(self, fixed: Optional[int], device: torch.device, long_forward_s: float = 0.05,
                 gain: float = 0.9, trial: Optional[bool] = None) -> None:
        trial = device.type == "cuda" if trial is None else trial
        self.chosen = fixed if fixed is not None or trial else 1
        self.device, self.long_forward_s, self.gain = device, long_forward_s, gain
        self.fixed = fixed is not None
        self.timed: list[tuple[int, float]] = []  # (K, seconds per draw) of the trial blocks so far

    def next(self) -> int:
        return self.chosen if self.chosen is not None else self.TRIAL[len(self.timed)]

    def evaluate(self, run: Callable[[int], tuple[torch.Tensor, torch.Tensor]], k: int,
                 count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``run(k)`` for a block of ``count`` ≤ k draws, timed while the choice is open."""
        if self.chosen is not None:
            try:
                return run(k)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not self.fixed or k == 1:
                    raise
                raise OptionError("draws_per_pass", k, f"this model cannot evaluate {k} draws per pass "
                                  f"({first_line(err)}); use 1 or auto.") from None
        started = time.perf_counter()
        try:
            result = run(k)
        except (RuntimeError, torch.OutOfMemoryError):
            if k == 1:
                raise
            self.chosen = 1
            return run(1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._record(k, (time.perf_counter() - started) / count)
        return result

    def _record(self, k: int, seconds: float) -> None:
        self.timed.append((k, seconds))
        if k == 1 and seconds > self.long_forward_s:
            self.chosen = 1
            return
        ratios = {size: per_draw / min(self.timed[i - 1][1], self.timed[i + 1][1])  # against the single passes
                  for i, (size, per_draw) in enumerate(self.timed[:-1]) if size > 1}  # before and after it
        best = min(ratios, key=ratios.__getitem__, default=1)
        last_paid = not ratios or ratios[max(ratios)] <= self.gain
        if len(self.timed) == len(self.TRIAL) or (k == 1 and not last_paid):
            self.chosen = best if ratios.get(best, 1.0) <= self.gain else 1


def _draws(ball: Ball, scope: PerturbedModel, seed: int, group: int, indices: range) -> torch.Tensor:
    """The perturbations (K, P) of draws ``indices`` of ``group``."""
    return torch.stack([ball.noise(generator(scope.device, seed, "average", group, k), scope.origin)
                        for k in indices])


def _group_value(scope: PerturbedModel, chunks: Sequence[Batch], ball: Ball, options: SharpnessOptions, group: int,
                 per_pass: DrawsPerPass, tick: Callable[[int], None]) -> GroupValue:
    """Base and mean perturbed loss and error of one group, with standard errors over draws."""
    scope.move_to(torch.zeros_like(scope.origin))
    base = scope.evaluate(chunks)
    losses, errors = [], []
    start = 0
    while start < options.draws:
        k = per_pass.next()
        indices = range(start, min(start + k, options.draws))
        deltas = _draws(ball, scope, options.seed, group, indices)

        def run(size: int) -> tuple[torch.Tensor, torch.Tensor]:
            if size == 1:
                values = []
                for delta in deltas:
                    scope.move_to(delta)
                    here = scope.evaluate(chunks)
                    values.append((here.loss, here.error))
                return torch.stack([v[0] for v in values]), torch.stack([v[1] for v in values])
            return scope.evaluate_points(chunks, scope.origin + deltas)

        loss, error = per_pass.evaluate(run, k, len(indices))
        losses.append(loss)
        errors.append(error)
        tick(len(indices))
        start += len(indices)
    loss_values, error_values = (torch.cat(v).cpu().numpy() for v in (losses, errors))
    root = np.sqrt(options.draws)
    return GroupValue(sum(len(y) for _, y in chunks), float(base.loss), float(base.error),
                      float(loss_values.mean()), float(error_values.mean()),
                      loss_stderr=float(loss_values.std(ddof=1) / root),
                      error_stderr=float(error_values.std(ddof=1) / root))


def average_case_sharpness(model: nn.Module, batches: Sequence[Batch], rho: float, options: SharpnessOptions,
                           loss_fn: LossFn = F.cross_entropy, progress: Optional[ProgressFn] = None) -> MeasureResult:
    """Average-case m-sharpness of ``model`` at radius ``rho`` on the fixed ``batches`` (see the
    module docstring), with standard errors over the draws. The model, its buffers and modes are
    bit-identical afterwards. Progress: task "average-case", one unit per draw and group."""
    options.validate()
    check_rho(rho)
    started = time.perf_counter()
    groups = sample_groups(batches, options.m)
    total, done = len(groups) * options.draws, 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        report(progress, "average-case", done, total, log=None, rho=rho)

    with PerturbedModel(model, options.params, options.bn, loss_fn) as scope:
        ball = scope.ball(options.norm, rho, options.adaptive)
        per_pass = DrawsPerPass(options.draws_per_pass, scope.device)
        values = [_group_value(scope, chunks, ball, options, index, per_pass, tick)
                  for index, chunks in enumerate(groups)]
        names = scope.names
    estimate, deltas = aggregate(values, "average", options.m, time.perf_counter() - started, draws=options.draws)
    return MeasureResult(estimate, names, deltas)
