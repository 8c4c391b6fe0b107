"""MixUp and CutMix on a batch (fastai semantics), and the loss that mixes two sets of hard labels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Mixed = tuple[Tensor, Tensor, Tensor, Tensor]


def _beta(alpha: float, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Draw n samples of Beta(alpha, alpha) on `device` (float32)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    # torch.distributions.Beta takes no generator; Beta(a, a) = G1 / (G1 + G2) with G1, G2 ~ Gamma(a).
    gammas = torch._standard_gamma(torch.full((2, n), float(alpha), device=device), generator=generator)
    return gammas[0] / gammas.sum(0)


def mixup(x: Tensor, y: Tensor, alpha: float = 0.4, generator: torch.Generator | None = None) -> Mixed:
    """Blend each image with a partner from the same batch; returns (x_mixed, y, y[perm], lam) with lam (B,)."""
    lam = _beta(alpha, x.shape[0], x.device, generator)
    lam = torch.maximum(lam, 1 - lam)  # the original image always dominates, as in fastai
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    w = lam.to(x.dtype).view(-1, *[1] * (x.ndim - 1))  # (B, 1, 1, 1)
    return w * x + (1 - w) * x[perm], y, y[perm], lam


def cutmix(x: Tensor, y: Tensor, alpha: float = 1.0, generator: torch.Generator | None = None) -> Mixed:
    """Paste one partner box per batch into each image; returns (x_mixed, y, y[perm], lam) with lam (B,)."""
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    lam = _beta(alpha, 1, x.device, generator)
    perm = torch.randperm(b, device=x.device, generator=generator)
    # fastai's rand_bbox: a box of side sqrt(1 - lam) * (W, H) around a uniform centre, clipped to the image.
    half_w = torch.round(w * (1 - lam).sqrt()).long() // 2
    half_h = torch.round(h * (1 - lam).sqrt()).long() // 2
    cx = torch.randint(0, w, (1,), device=x.device, generator=generator)
    cy = torch.randint(0, h, (1,), device=x.device, generator=generator)
    x1, x2 = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    y1, y2 = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    # A mask instead of slicing keeps the box on the device (no host sync for its coordinates).
    rows = torch.arange(h, device=x.device).view(h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)  # (H, W)
    lam = 1 - ((x2 - x1) * (y2 - y1)).float() / (w * h)  # the clipped box's true area
    return torch.where(box, x[perm], x), y, y[perm], lam.expand(b)


def mixed_loss(
    per_sample_loss: Callable[[Tensor, Tensor], Tensor], logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor
) -> Tensor:
    """Batch mean of lam * L(logits, y_a) + (1 - lam) * L(logits, y_b), L returning one loss per sample."""
    return (lam * per_sample_loss(logits, y_a) + (1 - lam) * per_sample_loss(logits, y_b)).mean()
