"""The generalised Gauss-Newton matrix of a model's loss as a matrix-free linear operator.

G = Σ_b (n_b / N) J_bᵀ H_b J_b, with J_b the Jacobian of batch b's outputs (logits, B×C) with
respect to the parameters in scope and H_b the Hessian of the batch's mean loss with respect to
those outputs (for softmax cross-entropy: (diag(p_i) − p_i p_iᵀ)/B per sample, block diagonal).
G is positive semi-definite whenever the loss is convex in the outputs (cross-entropy, squared
error), and equals the Hessian when the outputs are linear in the parameters; it drops the
term Σ (∂ℓ/∂z)·∇²z of the Hessian.

A product G v costs, per batch, one Jacobian-vector product (``torch.func.jvp``: a forward pass
carrying tangents), the output-space product H_b (J v) (a double derivative of the loss in the
C outputs only) and one vector-Jacobian product (a backward pass through the forward's graph):
no second backward through the network. :class:`GaussNewtonOperator` has the interface and the
machinery of :class:`.curvature.HessianOperator` — parameter scope, eval mode, BatchNorm in its
affine form, batches weighted by size, the samples split over torchrun ranks (``sharded``),
progress, :meth:`~.curvature.HessianOperator.plan_graphs` and the determinism check — so
Lanczos, the trace estimators and the spectral density run on it unchanged. What a "kept graph" holds here is a batch's forward graph (its outputs), kept for the
VJPs; without it the forward is rebuilt once per batch and data pass.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import functional_call, grad, jvp

from .curvature import HessianOperator


class GaussNewtonOperator(HessianOperator):
    """G = JᵀH_ℓJ of the mean of ``loss_fn(model(x), y)`` over ``batches`` w.r.t. the parameters
    selected by ``params``; arguments, vectors and lifetime as for :class:`HessianOperator`."""

    def _first_order(self, index: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(weighted loss, (outputs with their forward graph, x, y)) of batch ``index``."""
        x, y = self.batches[index]
        outputs = self.model(x)
        return self.loss_fn(outputs, y) * (len(y) / self.num_samples), (outputs, x, y)

    def _second_backward(self, graph: tuple[torch.Tensor, ...], piece: list[torch.Tensor]) -> torch.Tensor:
        """J_bᵀ H_b J_b v (P,) from batch b's kept ``graph`` (outputs, x, y); the graph stays."""
        outputs, x, y = graph
        weight = len(y) / self.num_samples
        primals = {name: p.detach() for name, p in zip(self.param_names, self.params)}
        tangents = dict(zip(self.param_names, piece))
        with warnings.catch_warnings():  # torch's first forward-mode call scripts its decompositions, with a warning
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
            _, jv = jvp(lambda ps: functional_call(self.model, ps, (x,)), (primals,), (tangents,))
        _, hjv = jvp(grad(lambda z: self.loss_fn(z, y) * weight), (outputs.detach(),), (jv,))
        gv = torch.autograd.grad(outputs, self.params, grad_outputs=hjv, retain_graph=True, materialize_grads=True)
        return torch.cat([g.reshape(-1) for g in gv])

    def _fresh_pass(self, piece: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (1,), gradient (P,) and G·piece (P,) from one data pass with new graphs."""
        loss_sum = torch.zeros(1, dtype=torch.float64, device=self.device)
        grad_sum = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        product_sum = torch.zeros_like(grad_sum)
        for i in range(len(self.batches)):
            loss, graph = self._first_order(i)
            loss_sum += loss.detach().double()
            grads = torch.autograd.grad(loss, self.params, retain_graph=True, materialize_grads=True)
            grad_sum += torch.cat([g.reshape(-1) for g in grads])
            product_sum += self._second_backward(graph, piece)
        return loss_sum, grad_sum, product_sum


CURVATURES = {"hessian": HessianOperator, "ggn": GaussNewtonOperator}
