"""The paper's CIFAR augmentation on whole batches on the device.

4-pixel zero padding, a random 32×32 (H×W) crop and a horizontal flip with probability ½,
done with one gather per batch instead of a per-image Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Augment a batch ``x`` (B×C×H×W) with offsets/flips drawn from ``generator`` (a CPU
    generator, so the draw is identical on every device). Returns a new B×C×H×W tensor."""
    b, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)                   # B×H
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]      # B×W
    index = rows[:, None, :, None] * padded.shape[-1] + cols[:, None, None, :]   # B×1×H×W
    flat = padded.flatten(2)                                                  # B×C×(H+2p)(W+2p)
    return flat.gather(2, index.expand(b, c, h, w).flatten(2)).view(b, c, h, w)
