"""Measurements the training loop takes every N steps without changing training
(``train --track-cosine-every N``, ``--track-sharpness-every N --track-samples M``).

The loop hands every step to :meth:`Tracking.step`, which takes it — ``optimizer.step(closure)``,
or :func:`.alignment.measure_step` on a step the cosine log is due — and logs:

- **cosine** (every N steps): the quantities of :mod:`.alignment` for the step (cosine_b at θ_l,
  cosine_a at θ_{l+1}, change, norms, dot products) with its lr. The auxiliary batch is the
  loop's B^a of that step: for Align-SAM the one the step itself draws; for every other
  variant the loop draws one at *every* step, as Align-SAM would (the same seeded stream, so
  that SAM and Align-SAM runs of one seed see the same B^a at each step), used by the
  measurement only. Those streams (:class:`alignsam_diag.train.BatchStream`'s auxiliary
  order and augmentation) feed nothing else, so drawing from them changes nothing. Cost: 3
  (Align-SAM) or 5 (others; 4 of them on B^a) extra forward+backward passes per logged step.
- **sharpness** (every N steps, at θ_l before step l): λ_max, the largest eigenvalue of the
  Hessian of the mean cross-entropy on a fixed seeded set of M training samples (no
  augmentation, BatchNorm in eval mode: as ``eigs``), by Lanczos to ‖Hv − λv‖ ≤ 1e-3·λ_max,
  warm-started from the previous measurement's eigenvector; with its residual, the products it
  cost, and the lr of step l (the edge-of-stability threshold is 2/lr).

Every measurement runs in a forked RNG and restores what it changes (parameters, BatchNorm
buffers, modes, ``.grad``), so a run with tracking ends with the same parameters, bit for bit,
as the same run without it. Logs are kept in memory and stored with the per-epoch table in
``history.h5`` at each epoch's end (:mod:`alignsam_diag.store.tracking`); a resumed run reads
back the rows before its checkpoint's step (and the last eigenvector) and logs on from there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ArrayDataset, fixed_batches, sample_subset
from ..errors import UserError
from ..optim.base import Closure
from ..store.alignment import QUANTITIES
from ..store.tracking import StepLog, read_logs
from .alignment import measure_step, measurement_rho, own_rng, reuses_step_passes
from .curvature import HessianOperator
from .lanczos import lanczos

#: Lanczos settings of the tracked λ_max (the largest algebraic eigenvalue).
SHARPNESS_LANCZOS = {"k": 1, "which": "LA", "tol": 1e-3, "max_iter": 100}
#: Columns stored as other than float64.
DTYPES = {"step": np.int64, "products": np.int64, "converged": np.bool_}


class _Log:
    """Columns of one kind of log, appended row by row."""

    def __init__(self, names: tuple[str, ...], every: int, steps_per_epoch: int) -> None:
        self.names, self.every, self.steps_per_epoch = ("step", "epoch", *names), every, steps_per_epoch
        self.rows: dict[str, list[Any]] = {name: [] for name in self.names}
        self.settings: dict[str, Any] = {}

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def append(self, step: int, **values: Any) -> None:
        for name, value in {"step": step, "epoch": step / self.steps_per_epoch, **values}.items():
            self.rows[name].append(value)

    def latest(self, name: str) -> Optional[float]:
        return float(self.rows[name][-1]) if self.rows[name] else None

    def stored(self, arrays: Optional[dict[str, np.ndarray]] = None) -> StepLog:
        columns = {name: np.asarray(values, dtype=DTYPES.get(name, np.float64)) for name, values in self.rows.items()}
        return StepLog(columns, self.every, self.steps_per_epoch, dict(self.settings), arrays or {})

    def load(self, log: StepLog, where: str) -> None:
        missing = [name for name in self.names if name not in log.columns]
        if missing:
            raise UserError(f"{where} lacks the columns {', '.join(missing)}; it was written by another version "
                            "of alignsam-diag — resume with that version or start a new run.")
        self.rows = {name: log.columns[name].tolist() for name in self.names}
        self.settings = dict(log.settings)


class SharpnessTracker:
    """λ_max of the Hessian on ``samples`` training samples of ``data`` chosen by ``seed``, in
    fixed batches of ``batch_size`` (see the module docstring)."""

    def __init__(self, model: nn.Module, data: ArrayDataset, samples: int, seed: int, batch_size: int,
                 every: int, steps_per_epoch: int) -> None:
        self.model = model
        chosen = sample_subset(data, samples, seed)
        self.batches = fixed_batches(chosen, batch_size)
        self.seed = seed
        self.vector: Optional[torch.Tensor] = None  # the last top eigenvector (P,) f8, the next warm start
        # Kept graphs or not, measured once: the measurement's saved-tensor hooks leave batch 0's
        # graph unreclaimable (a reference cycle through autograd), so measuring at every log
        # leaked one graph per log (24 GB over 100 logs of Fashion-MNIST cnn-small).
        self.keep_graph: Optional[bool] = None
        self.log = _Log(("lambda_max", "residual", "products", "converged", "lr", "seconds"), every, steps_per_epoch)
        self.log.settings = {"samples": len(chosen), "seed": seed, "batch_size": batch_size, **SHARPNESS_LANCZOS}

    def measure(self, step: int, lr: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        started = time.perf_counter()
        with own_rng(params), HessianOperator(self.model, F.cross_entropy, self.batches,
                                              keep_graph=bool(self.keep_graph)) as op:
            if self.keep_graph is None:
                self.keep_graph = op.plan_graphs().keep_graph
            start = self.vector if self.vector is not None and self.vector.shape == (op.shape[0],) else None
            spectrum = lanczos(op, seed=self.seed, start=start, eigenvectors=True, **SHARPNESS_LANCZOS)
        self.vector = spectrum.eigenvectors[0].detach()
        self.log.append(step, lambda_max=float(spectrum.eigenvalues[0]), residual=float(spectrum.residuals[0]),
                        products=spectrum.num_products, converged=spectrum.converged, lr=lr,
                        seconds=time.perf_counter() - started)

    def stored(self) -> StepLog:
        vector = {} if self.vector is None else {"vector": self.vector.cpu().numpy()}
        return self.log.stored(vector)

    def load(self, log: StepLog, where: str) -> None:
        self.log.load(log, where)
        if "vector" in log.arrays:
            device = next(self.model.parameters()).device
            self.vector = torch.from_numpy(np.asarray(log.arrays["vector"], dtype=np.float64)).to(device)


class Tracking:
    """What the training loop calls at each step (:meth:`step`); with both intervals 0 it only
    takes the step. ``cosine_every``, ``sharpness_every``: the logging intervals in steps (0:
    off); ``samples``, ``seed``, ``batch_size``: the sharpness measurement's sample set and its
    batches; ``steps_per_epoch``: to store the epoch of each row."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, data: ArrayDataset,
                 cosine_every: int = 0, sharpness_every: int = 0, samples: int = 1024, seed: int = 0,
                 batch_size: int = 1024, steps_per_epoch: int = 1) -> None:
        self.model, self.optimizer = model, optimizer
        self.cosine = _Log((*QUANTITIES, "lr"), cosine_every, steps_per_epoch) if cosine_every else None
        if self.cosine is not None:
            rho = measurement_rho(optimizer)
            self.cosine.settings = {"optimizer": getattr(getattr(optimizer, "variant", None), "name", None), "rho": rho,
                                    "reuses_step_passes": reuses_step_passes(optimizer, rho)}
        self.sharpness = (SharpnessTracker(model, data, samples, seed, batch_size, sharpness_every, steps_per_epoch)
                          if sharpness_every else None)

    def step(self, step: int, closure: Closure, draw_aux: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take optimizer step ``step`` (0-based, counted over the run) with ``closure`` and log
        what is due. ``draw_aux()`` returns the step's auxiliary batch, drawing it on first use
        (the closure's ``"aux"`` batch)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.sharpness is not None and self.sharpness.log.due(step):
            self.sharpness.measure(step, lr)
        if self.cosine is None:
            self.optimizer.step(closure)
            return
        aux = draw_aux()  # every step, as Align-SAM draws it (for Align-SAM: drawn here instead of in its step)
        if not self.cosine.due(step):
            self.optimizer.step(closure)
            return
        result = measure_step(self.model, self.optimizer, closure, self.cosine.settings["rho"])
        self.cosine.settings.update(aux_batch_size=len(aux[1]), extra_passes=result.passes)
        self.cosine.append(step, **dict(zip(QUANTITIES, result.values())), lr=lr)

    def logs(self) -> dict[str, StepLog]:
        """The logs so far by kind, as ``history.h5`` stores them."""
        logs = {}
        if self.cosine is not None:
            logs["cosine"] = self.cosine.stored()
        if self.sharpness is not None:
            logs["sharpness"] = self.sharpness.stored()
        return logs

    def latest(self) -> dict[str, float]:
        """The last logged cosine_b, cosine_a and λ_max (for the epoch's progress line)."""
        found = {name: self.cosine.latest(name) for name in ("cosine_b", "cosine_a")} if self.cosine else {}
        if self.sharpness is not None:
            found["lambda_max"] = self.sharpness.log.latest("lambda_max")
        return {k: v for k, v in found.items() if v is not None}

    def restore(self, history: str | os.PathLike, step: int) -> None:
        """Continue the logs of a run resumed at ``step`` from its ``history`` file (the rows of
        the steps before it; none if the file does not exist or holds none)."""
        stored = read_logs(history) if Path(history).exists() else {}
        if self.cosine is not None and "cosine" in stored:
            self.cosine.load(stored["cosine"].before(step), f"{history}: its cosine log")
        if self.sharpness is not None and "sharpness" in stored:
            self.sharpness.load(stored["sharpness"].before(step), f"{history}: its sharpness log")
