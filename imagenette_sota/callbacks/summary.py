"""RunSummary: what a run is about to do, in four lines at its start: data, model, device, logs.

The CLI's first screen (in place of Lightning's model summary table and device lines): the images and sizes the
data module set up, the backbone and its parameter count, the device, precision and threads, and the folder
TensorBoard reads. Printed once per run, on rank 0, when the first loop starts (the data is set up by then).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class RunSummary(Callback):
    """Logs the run's data, model, device and log folder when its first loop starts (see the module doc).

    ``model`` and ``datamodule``: the classifier and data module to describe when the Trainer runs another module
    around them (``imagenette-sota tta`` predicts with a wrapper); by default the Trainer's own.
    """

    def __init__(self, model: L.LightningModule | None = None, datamodule: L.LightningDataModule | None = None):
        self.model, self.datamodule, self.done = model, datamodule, False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize before the sanity check."""
        self._summarize(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize a validate run."""
        self._summarize(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize a test run."""
        self._summarize(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarize a predict run (``tta``)."""
        self._summarize(trainer, pl_module)

    def _summarize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done:
            return
        self.done = True
        lines = [
            ("data", data_line(self.datamodule or trainer.datamodule)),
            ("model", model_line(self.model or pl_module)),
            ("device", device_line(trainer)),
            ("logs", log_line(trainer)),
        ]
        rank_zero_info("\n".join(f"{name:<7}{text}" for name, text in lines if text))


def data_line(dm: Any) -> str | None:
    """Where the images are, how many, and the sizes and batch they are served at."""
    train, val = getattr(dm, "train_set", None), getattr(dm, "val_set", None)
    if train is None or val is None:
        return None
    val_size = dm.val_size or dm.train_size
    return (
        f"{dm.data_dir}: {len(train):,} training + {len(val):,} validation images, {dm.num_classes} classes; "
        f"presize {dm.presize} px, train {dm.train_size} px, val {val_size} px, batch {dm.batch_size}"
    )


def model_line(model: L.LightningModule) -> str:
    """The backbone (as its checkpoints record it) and its parameter count."""
    network = getattr(model, "model", model)
    spec = getattr(model, "backbone_record", None)
    name = spec["class_path"] if isinstance(spec, dict) else spec or type(network).__name__
    return f"{name}, {sum(p.numel() for p in network.parameters()):,} parameters"


def log_line(trainer: L.Trainer) -> str:
    """The run's log folder, and how to look at it when it is TensorBoard's."""
    if not trainer.loggers:
        return "none (no logger)"
    save_dir = trainer.logger.save_dir if isinstance(trainer.logger, TensorBoardLogger) else None
    return f"{trainer.log_dir}" + (f"  (tensorboard --logdir {save_dir})" if save_dir else "")


def device_line(trainer: L.Trainer) -> str:
    """The device (its name for a GPU), how many, the precision, and the CPU's intra-op threads."""
    device = trainer.strategy.root_device
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    count = f" x {trainer.world_size}" if trainer.world_size > 1 else ""
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' if n > 1 else ''}" if device.type == "cpu" else ""
    return f"{device}{name}{count}, precision {trainer.precision}{threads}"
