"""The run's Lightning Trainer: imagenette_sota.quiet's, on this device, in bf16 (``--fp32``: fp32)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import lightning as L


def quiet_trainer(device: torch.device, args: argparse.Namespace, **kwargs: Any) -> L.Trainer:
    """A one-device quiet Trainer in bf16 (``--fp32``: fp32), cuDNN autotuning on CUDA."""
    from imagenette_sota import quiet  # imports Lightning: late, as the env section reports it missing

    return quiet.trainer(
        accelerator=device.type if device.type != "cuda" else "gpu",
        devices=1,
        precision="32-true" if args.fp32 else "bf16-mixed",
        benchmark=device.type == "cuda",
        **kwargs,
    )
