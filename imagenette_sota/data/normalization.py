"""Normalization: per-channel statistics that turn images in [0, 1] into the network's inputs, and back for pictures.

Pure torch, no Lightning: the data module's batch transforms normalize with one, Inspection undoes it to draw images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)

Statistics = Literal["imagenet", "batch", "none"]  # which statistics normalize: ImageNet's, a batch's, none


def normalize(x: Tensor, mean: Tensor | tuple[float, ...], std: Tensor | tuple[float, ...]) -> Tensor:
    """Per-channel ``(x - mean) / std`` for a (B, C, H, W) batch."""
    mean = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


class Normalization:
    """ImageNet's statistics, statistics fit from the first batch it sees (fastai ``Normalize()``), or none.

    ``mean`` and ``std`` live on the host; the copy on a batch's device is made once per device and value (a copy
    per batch would be a host-to-device transfer every step).
    """

    def __init__(self, statistics: Statistics = "imagenet") -> None:
        if statistics not in get_args(Statistics):
            raise ValueError(f"normalize={statistics!r}: choose 'imagenet', 'batch' or 'none'")
        self.statistics = statistics
        self.mean, self.std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.fitted = statistics != "batch"  # "batch": fit from the first batch normalized
        self._device_copy: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # (mean, std, on device, on device)

    def __call__(self, x: Tensor) -> Tensor:
        """Normalize a float batch in [0, 1] (unchanged with statistics "none")."""
        return x if self.statistics == "none" else normalize(x, *self.on(x.device))

    def fit(self, x: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Per-channel mean and std of the float batch ``x``, used from then on; ``reduce`` makes ranks agree."""
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        if reduce is not None:
            mean, std = reduce(mean), reduce(std)
        self.mean, self.std, self.fitted = mean.cpu(), std.cpu(), True
        log.info("normalization statistics from a batch: mean %s std %s", self.mean.tolist(), self.std.tolist())

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``mean`` and ``std`` on ``device``, copied once per device and value."""
        copy = self._device_copy
        if copy is None or copy[0] is not self.mean or copy[1] is not self.std or copy[2].device != device:
            copy = self._device_copy = (self.mean, self.std, self.mean.to(device), self.std.to(device))
        return copy[2], copy[3]

    def inverse(self, x: Tensor) -> Tensor:
        """Normalized images -> float images in [0, 1] (for pictures)."""
        if self.statistics == "none":
            return x.float().clamp(0, 1)
        mean, std = (t.to(x.device, torch.float32).view(1, -1, 1, 1) for t in (self.mean, self.std))
        return (x.float() * std + mean).clamp(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """The statistics (fit ones included), for checkpoints."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "stats_fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.mean, self.std = torch.tensor(state["mean"]), torch.tensor(state["std"])
        self.fitted = state["stats_fitted"]
