"""TrainScalars: what the training loop is fed and how fast, one scalar each per epoch (any logger).

- ``train/image_size``: side (px) of the training images (the epoch's first batch, after augmentation).
- ``train/batch_size``: images per batch per device (the epoch's first batch).
- ``train/images_per_sec``: training images per second over the epoch (data loading included, validation not),
  summed over the ranks (every rank logs: the sum is a collective).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class TrainScalars(Callback):
    """Logs ``train/image_size``, ``train/batch_size`` and ``train/images_per_sec`` every epoch (see the module doc)."""

    def __init__(self) -> None:
        self._start, self._seconds, self._images = 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's clock."""
        self._start, self._seconds, self._images = time.perf_counter(), 0.0, 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Log the epoch's image size and batch size (what the network really gets)."""
        if batch_idx == 0:
            x = batch[0]
            for name, value in (("train/image_size", x.shape[-1]), ("train/batch_size", len(x))):
                pl_module.log(name, float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the images; the clock stops at the last training batch (validation is not training time)."""
        self._images += len(batch[1])
        self._seconds = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's throughput, summed over the ranks."""
        rate = self._images / self._seconds if self._seconds > 0 else 0.0
        pl_module.log("train/images_per_sec", rate, on_epoch=True, sync_dist=True, reduce_fx="sum", batch_size=1)
