"""The base class of the SAM family and the registries of variants and base optimizers.

Design after davda54/sam: :class:`SharpnessAware` is a ``torch.optim.Optimizer`` that wraps a
base optimizer (SGD or AdamW) and shares its ``param_groups``, so LR schedulers, ``lr`` and
``weight_decay`` live in one place. It owns everything the variants have in common — the passes,
perturbing and exactly restoring the parameters, the BatchNorm protection, the base step and
the state dict — and a variant only says how it turns the clean gradient into the gradient the
base optimizer steps with (:meth:`SharpnessAware._descent_gradient`).

A variant's hyper-parameters are those of its description (``variant``, from
:mod:`alignsam_diag.optim.variants`): given as keyword arguments, checked against it, the others
at its reference defaults, and set as attributes of the same names (``self.rho``).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from ..registry import Registry
from . import vectors
from .batchnorm import BatchNormGuard
from .geometry import Elementwise, Euclidean
from .variants import OPTIMIZERS, Variant
from .vectors import Vector

#: ``closure(which)`` computes the loss on batch ``which`` ("train" or "aux"), calls
#: ``backward()`` and returns the loss.
Closure = Callable[[str], torch.Tensor]

BASES: Registry[Callable[..., torch.optim.Optimizer]] = Registry("base optimizer")
#: Settings of a torch optimizer that choose how its update is computed, not what it computes.
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable", "capturable")


@BASES.register("sgd")
def _sgd(groups: list[dict], lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.Optimizer:
    if nesterov and momentum <= 0:
        raise UserError("--nesterov needs a positive --momentum.")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@BASES.register("adamw")
def _adamw(groups: list[dict], lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.Optimizer:
    """AdamW with β1 = ``momentum`` (its first-moment decay) and β2 = 0.999."""
    if nesterov:
        raise UserError("--nesterov applies to the sgd base only.")
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


class SharpnessAware(torch.optim.Optimizer):
    """A SAM-family optimizer driven entirely by :meth:`step` with a closure.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        base: base optimizer by name (:data:`BASES`: ``sgd`` or ``adamw``).
        lr, momentum, weight_decay, nesterov: the base optimizer's settings (``momentum`` is
            AdamW's β1). Weight decay lives here only, never in the loss.
        model: the model, for BatchNorm protection (and ASAM's weight/bias split). With it,
            the running statistics after a step are exactly those one clean forward pass on the
            train batch at θ leaves. Without it, every pass of a step updates them.

        hyper: the variant's own hyper-parameters (:attr:`variant`); each becomes an attribute.

    Under DistributedDataParallel (pass the DDP-wrapped ``model``), every pass runs inside
    ``no_sync()``, so each rank perturbs with its own gradients (SAM's m-sharpness), and only
    the gradient handed to the base step is averaged over the ranks.
    """

    #: What the class implements: name, hyper-parameters, whether it needs an auxiliary batch.
    variant: ClassVar[Variant]

    def __init__(self, params: Any, *, base: str = "sgd", lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, model: Optional[nn.Module] = None,
                 **hyper: Any) -> None:
        #: Every hyper-parameter of the variant as used (the given ones checked, the others at
        #: their defaults); each is also an attribute (``self.rho``).
        self.hyper = self.variant.resolve(hyper)
        vars(self).update(self.hyper)
        super().__init__(params, {})
        self.base_name = base
        self.base = BASES.get(base)(self.param_groups, lr=lr, momentum=momentum,
                                    weight_decay=weight_decay, nesterov=nesterov)
        self.param_groups = self.base.param_groups
        self.defaults.update(self.base.defaults)
        self.model = model
        self.geometry: Euclidean | Elementwise = Euclidean()
        self._batchnorm = BatchNormGuard(model)
        self._origin = vectors.Snapshot()

    @property
    def needs_aux(self) -> bool:
        """Whether ``step`` asks the closure for the auxiliary batch."""
        return self.variant.needs_aux

    @property
    def single_pass(self) -> bool:
        """Whether a step is a single forward/backward pass (fp16 with a GradScaler works only then)."""
        return self.variant.single_pass

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Closure] = None) -> torch.Tensor:  # type: ignore[override]
        """One update; returns the loss of the first pass (train batch, unperturbed θ).

        ``closure(which)`` computes the loss on the train batch (``"train"``) or on the
        auxiliary batch (``"aux"``: the same B^a for every call within one step), calls
        ``backward()`` and returns the loss. Gradients are zeroed before every call. Afterwards
        ``.grad`` holds the gradient the base optimizer stepped with.
        """
        if closure is None:
            raise TypeError(f"{type(self).__name__}.step needs a closure(which) that computes the loss and calls backward().")
        loss = self._pass(closure, "train")
        with self._batchnorm.kept():
            self._update(closure)
        return loss

    def _update(self, closure: Closure) -> None:
        """From the clean gradient in ``.grad`` at θ, update θ (after the other passes)."""
        self._descent_gradient(closure)
        self._base_step()

    def _descent_gradient(self, closure: Closure) -> None:
        """The variant: given the clean train gradient in ``.grad`` at θ, make further passes
        and leave in ``.grad`` the gradient for the base step, with the parameters at θ."""
        raise NotImplementedError

    # -- tools for the variants ---------------------------------------------------------------

    def _params(self) -> Vector:
        return [p for group in self.param_groups for p in group["params"]]

    def _pass(self, closure: Closure, which: str) -> torch.Tensor:
        """Zero the gradients, then one forward/backward pass on batch ``which`` (this rank's
        gradients only, under DDP)."""
        self.zero_grad(set_to_none=True)
        with torch.enable_grad(), self._no_sync():
            return closure(which)

    def _distributed(self) -> bool:
        return isinstance(self.model, DistributedDataParallel) and dist.is_initialized()

    def _no_sync(self) -> ContextManager[None]:
        return self.model.no_sync() if self._distributed() else nullcontext()  # type: ignore[union-attr]

    def _base_step(self) -> None:
        """The base optimizer's step with ``.grad``, averaged over the ranks under DDP."""
        if self._distributed():
            grads = [p.grad for p in self._params() if p.grad is not None]
            for grad in grads:
                dist.all_reduce(grad)
            torch._foreach_div_(grads, dist.get_world_size())
        self.base.step()

    def _gradient(self) -> Vector:
        """The gradients of the last pass, zeros where a parameter got none. The ``.grad``
        tensors themselves, not copies (the next pass allocates fresh ones): changing them in
        place changes what the base step uses; a parameter without a gradient keeps none, and
        the base step skips it, as in plain training."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params()]

    def _ascent(self, grad: Vector, radius: float) -> Vector:
        """The steepest ascent of length ``radius`` in the variant's geometry
        (SAM: ρ g/‖g‖; ASAM: ρ T²g/‖Tg‖)."""
        return self.geometry.ascent(grad, self._params(), radius)

    @contextmanager
    def _perturbed(self, offset: Vector) -> Iterator[None]:
        """Parameters at θ + offset inside the block; exactly θ after it (copied back, never
        subtracted, so also parameters that got no gradient in the meantime). Not nested."""
        params = self._params()
        origin = self._origin.take(params)
        vectors.add_(params, offset)
        try:
            yield
        finally:
            vectors.copy_(params, origin)

    def base_settings(self) -> dict[str, Any]:
        """The base optimizer's settings as it uses them, its own defaults included: ``name`` and
        every hyper-parameter (``lr`` as given, the peak of any schedule), e.g. ``{"name": "sgd",
        "lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0005, "nesterov": False,
        "maximize": False}``; AdamW adds ``betas``, ``eps``, ``amsgrad``."""
        return {"name": self.base_name,
                **{k: v for k, v in self.base.defaults.items() if k not in IMPLEMENTATION_FLAGS}}

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The variant's own state (per-parameter buffers, counters) plus the base optimizer's
        (momentum buffers, Adam moments, step counts) under ``"base"``."""
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.base.load_state_dict(state_dict.pop("base"))
        super().load_state_dict(state_dict)
        self.base.param_groups = self.param_groups


class Plain(SharpnessAware):
    """The base optimizer alone (``sgd``: with ``base="adamw"`` it is plain AdamW): one pass."""

    variant = OPTIMIZERS.get("sgd")

    def _descent_gradient(self, closure: Closure) -> None:
        pass
