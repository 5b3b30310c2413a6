"""Shared tiny models, batches and closures for the tests of :mod:`alignsam_diag.optim`.

Imported by the other ``tests/test_optim_*.py`` modules; it holds no tests itself.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from alignsam_diag import optim

VARIANTS = optim.OPTIMIZERS.names()
MULTI_PASS = [name for name in VARIANTS if name != "sgd"]
#: Hyper-parameters that make every variant's own code path run within a few steps
#: (LookSAM reuses g_v on step 1; Lookbehind takes two inner steps).
EXERCISE: dict[str, dict[str, Any]] = {"looksam": {"k": 2}, "lookbehind-sam": {"k": 2}}
#: Base optimizer settings with momentum and weight decay, so their buffers matter.
SGD_SETTINGS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}

Batch = tuple[torch.Tensor, torch.Tensor]
Flat = torch.Tensor


@dataclass
class Batches:
    """Per step one train batch and one auxiliary batch (the aux batch a step sees is fixed)."""

    train: list[Batch]
    aux: list[Batch]


def make_batches(steps: int, shape: tuple[int, ...], classes: int = 3, n_train: int = 8, n_aux: int = 4,
                 dtype: torch.dtype = torch.float64, seed: int = 0) -> Batches:
    gen = torch.Generator().manual_seed(seed)

    def batch(n: int) -> Batch:
        return torch.randn(n, *shape, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)

    return Batches([batch(n_train) for _ in range(steps)], [batch(n_aux) for _ in range(steps)])


def mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """6 → 5 → 3 with tanh: four parameter tensors (two weights, two biases), no BatchNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def bn_net(seed: int = 0) -> nn.Module:
    """The project's ``cnn-small`` (conv-BN-ReLU ×2 + linear), 4 channels wide, on 1×8×8 inputs."""
    from alignsam_diag.models import ModelSpec, build_model  # here: keeps torchvision out of the DDP workers

    torch.manual_seed(seed)
    return build_model(ModelSpec("cnn-small", num_classes=3, in_channels=1, image_size=8, kwargs={"width": 4}))


BN_SHAPE = (1, 8, 8)
MLP_SHAPE = (6,)


def closure_for(model: nn.Module, train: Batch, aux: Batch, calls: Optional[list[str]] = None,
                autocast: Optional[torch.dtype] = None) -> optim.Closure:
    """The training loop's closure: cross-entropy on the batch asked for; records the calls."""

    def closure(which: str = "train") -> torch.Tensor:
        if calls is not None:
            calls.append(which)
        x, y = train if which == "train" else aux
        context = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else nullcontext()
        with context:
            out = model(x)
        loss = F.cross_entropy(out.float() if autocast is not None else out, y)
        loss.backward()
        return loss

    return closure


def train(name: str, model: nn.Module, batches: Batches, steps: Optional[int] = None, first: int = 0,
          optimizer: Optional[optim.SharpnessAware] = None, scheduler: Any = None, **kwargs: Any) -> optim.SharpnessAware:
    """Steps ``first`` … ``first + steps − 1`` of variant ``name`` on ``batches``; returns the
    optimizer (created with ``model=model``, :data:`SGD_SETTINGS` and ``kwargs`` unless given)."""
    if optimizer is None:
        optimizer = optim.create(name, model.parameters(), model=model, **{**SGD_SETTINGS, **kwargs})
    steps = len(batches.train) - first if steps is None else steps
    for t in range(first, first + steps):
        optimizer.step(closure_for(model, batches.train[t], batches.aux[t]))
        if scheduler is not None:
            scheduler.step()
    return optimizer


def flat(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_loss(model: nn.Module, batch: Batch) -> Callable[[Flat], torch.Tensor]:
    """L_B as a function of the flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(theta: Flat) -> torch.Tensor:
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    return loss


def grad(loss: Callable[[Flat], torch.Tensor], theta: Flat) -> Flat:
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(loss(theta), theta)[0]
