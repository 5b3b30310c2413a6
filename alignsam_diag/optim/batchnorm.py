"""Keep BatchNorm running statistics as one clean pass leaves them.

Every pass of a SAM-family step runs the model in train mode, so every pass would update the
running mean/variance and ``num_batches_tracked`` of each BatchNorm layer. Only the first pass
(the train batch at the unperturbed θ) should count. The references either let all passes
count or set ``momentum = 0`` during the others, which still bumps ``num_batches_tracked``
(and, with ``momentum=None``, changes the cumulative average). Here the buffers are copied
after the clean pass and copied back after the others: exact.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import vectors


class BatchNormGuard:
    """Restores the BatchNorm buffers of ``model`` (none: does nothing) after a block."""

    def __init__(self, model: Optional[nn.Module]) -> None:
        self.model = model
        self._snapshot = vectors.Snapshot()

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Inside the block the buffers may change; after it they are back, bit for bit, to
        what they were on entry."""
        modules = self.model.modules() if self.model is not None else []
        buffers = [b for m in modules if isinstance(m, _BatchNorm) for b in m.buffers(recurse=False)]
        if not buffers:
            yield
            return
        saved = self._snapshot.take(buffers)
        try:
            yield
        finally:
            vectors.copy_(buffers, saved)
