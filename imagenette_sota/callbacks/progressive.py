"""ProgressiveResize: the training image size and batch size of each stage of a fit, set epoch by epoch.

The book's recipe: 4 epochs at 128 px, batch 128, then 6 at 224 px, batch 64 (the one-cycles of each stage are
``OneCycles``'s, callbacks/cycles.py)::

    ProgressiveResize({0: Stage(128, 128), 4: Stage(224, 64)})

and as LightningCLI YAML (``imagenette-sota fit --config this.yaml``)::

    trainer:
      callbacks:
        - class_path: imagenette_sota.callbacks.ProgressiveResize
          init_args:
            schedule:
              0: {size: 128, batch_size: 128}
              4: {size: 224, batch_size: 64}

FFCV-style smooth resizing (160 -> 192 px over epochs 11..13 of 16, batch 256 at 192 px, larger below it; validation
at 224 px is the data module's ``val_size``)::

    ProgressiveResize(ramp=Ramp(160, 192, start_epoch=11, end_epoch=13, batch_size=256))

What it sets, and when (public state only):

- ``datamodule.train_size`` and (if a stage gives one) ``batch_size``, the data module's own state: for epoch e + 1
  at the end of epoch e (after its validation: Lightning builds an epoch's train loader before its epoch-start
  hooks), for the first epoch in ``setup`` (before Lightning builds the first train loader and
  ``configure_optimizers`` counts its batches), and for the epoch a resumed fit starts with in ``on_train_start``
  (a data module without state of its own gets its sizes back). Any data module with public ``train_size`` and
  ``batch_size`` works. Validation runs at the data module's ``val_size`` (None: the current train size).
- A new batch size needs a new train loader: when the stages change it, the callback sets the Trainer's public
  ``reload_dataloaders_every_n_epochs`` to 1 (loaders are then rebuilt every epoch).
- Batch sizes that change also change the number of optimizer steps per epoch, which
  ``trainer.estimated_stepping_batches`` (every epoch at the first batch size) does not know: when training starts
  the callback refuses a step scheduler (a ``OneCycleLR``) without room for the fit's steps (unless ``OneCycles``,
  which sizes its own, is among the callbacks), and before each epoch's first step one without room for that epoch,
  naming the fix (``OneCycles`` times one-cycles to the stages; ``ProgressiveResize.total_steps`` counts a fit's
  steps).

Multi-GPU (``trainer: {strategy: ddp, devices: N}``): ``batch_size`` is per device, the global batch is
batch_size x devices x num_nodes, and no learning rate is rescaled with it: scale the cycles' ``lr_max`` yourself if
you want to. Lightning's ``sync_batchnorm: true`` computes BatchNorm statistics over the global batch (worth it when
the per-device batch is small; it costs a synchronization per BatchNorm layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from imagenette_sota.schedule import steps_per_epoch, within_max_steps


@dataclass(frozen=True)
class Stage:
    """From its epoch on: train image side (px) and batch size per device.

    ``None`` keeps the previous stage's size or batch size (the data module's batch size before any stage sets one).
    """

    size: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("size", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Stage {name}={value!r} must be a positive integer (or None to keep the last)")
        if self.size is None and self.batch_size is None:
            raise ValueError("a Stage must set a size or a batch_size")


@dataclass(frozen=True)
class Ramp:
    """FFCV's smooth resizing: min_size up to start_epoch, linear to max_size at end_epoch, rounded to `multiple`.

    With ``batch_size`` (the batch at ``max_size``), smaller images get batch_size * (max_size / size)^2
    (rounded down): the activations' memory stays about constant. Without it the batch size is left alone.
    """

    min_size: int
    max_size: int
    start_epoch: int
    end_epoch: int
    multiple: int = 32  # px: sizes inside the ramp are rounded to a multiple of this
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"Ramp needs 1 <= min_size <= max_size, got {self.min_size} and {self.max_size}")
        if not 0 <= self.start_epoch < self.end_epoch:
            raise ValueError(
                f"Ramp needs 0 <= start_epoch < end_epoch, got start_epoch={self.start_epoch}, "
                f"end_epoch={self.end_epoch}"
            )
        if self.multiple < 1:
            raise ValueError(f"Ramp multiple={self.multiple} must be a positive integer")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"Ramp batch_size={self.batch_size} must be a positive integer (or None)")

    def size_at(self, epoch: int) -> int:
        """Train image side (px) at `epoch`."""
        if epoch <= self.start_epoch:
            return self.min_size
        if epoch >= self.end_epoch:
            return self.max_size
        t = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        size = round((self.min_size + t * (self.max_size - self.min_size)) / self.multiple) * self.multiple
        return min(max(size, self.min_size), self.max_size)

    def stages(self) -> dict[int, Stage]:
        """The ramp as one stage per epoch up to end_epoch."""
        stages = {}
        for epoch in range(self.end_epoch + 1):
            size = self.size_at(epoch)
            batch = None if self.batch_size is None else self.batch_size * self.max_size**2 // size**2
            stages[epoch] = Stage(size, batch)
        return stages


class ProgressiveResize(Callback):
    """Progressive resizing: per-epoch training image size and batch size (see the module doc)."""

    def __init__(self, schedule: dict[int, Stage] | None = None, ramp: Ramp | None = None) -> None:
        """Args:
        schedule: {epoch: Stage}, epochs counted from 0; epoch 0 must give a size. Not with ``ramp``.
        ramp: a smooth size ramp instead of a schedule.
        """
        if (schedule is None) == (ramp is None):
            raise ValueError("give ProgressiveResize a schedule or a ramp (one of the two)")
        schedule = ramp.stages() if ramp is not None else dict(schedule)
        bad = [k for k in schedule if not isinstance(k, int) or k < 0]
        if bad:
            raise ValueError(f"schedule epochs must be integers >= 0, got {bad}")
        if 0 not in schedule or schedule[0].size is None:
            raise ValueError(f"schedule needs a stage at epoch 0 with a size, got epochs {sorted(schedule)}")
        for epoch, stage in schedule.items():
            if not isinstance(stage, Stage):
                raise TypeError(f"schedule[{epoch}]={stage!r} must be a Stage")
        self.schedule = schedule
        self.epochs = sorted(schedule)

    def stage_at(self, epoch: int) -> Stage:
        """The stage in force at ``epoch``: the size and the batch size last set (None: none set yet)."""
        earlier = [self.schedule[k] for k in reversed(self.epochs) if k <= epoch]
        size = next(s.size for s in earlier if s.size is not None)
        return Stage(size, next((s.batch_size for s in earlier if s.batch_size is not None), None))

    def batch_size_at(self, epoch: int) -> int | None:
        """The batch size per device a stage sets for ``epoch`` (None: the data module's own)."""
        return self.stage_at(epoch).batch_size

    def total_steps(self, trainer: L.Trainer) -> int:
        """Optimizer steps of the whole fit (``max_epochs``) with the stages' batch sizes, as Lightning counts them.

        What ``trainer.estimated_stepping_batches`` would be if it knew the stages: size a module's own scheduler
        with it. Needs the train loader (``trainer.estimated_stepping_batches`` builds it, if called first).
        """
        return sum(epoch_steps(trainer, self.batch_size_at(e)) for e in range(trainer.max_epochs))

    # --- hooks ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, rebuild loaders if batch sizes change, size the first epoch's data."""
        if stage != "fit":
            return
        missing = [a for a in ("train_size", "batch_size") if not hasattr(trainer.datamodule, a)]
        if missing:
            raise AttributeError(
                f"ProgressiveResize needs trainer.fit(..., datamodule=dm) with public {missing} on the data module"
            )
        if self._batch_sizes_change() and trainer.reload_dataloaders_every_n_epochs != 1:
            rank_zero_info("ProgressiveResize: batch sizes change, so train loaders are rebuilt every epoch")
            trainer.reload_dataloaders_every_n_epochs = 1
        self._apply(trainer, trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch a fit starts with is known now (a resumed one's too): size its data; check the schedulers."""
        self._apply(trainer, trainer.current_epoch)
        from imagenette_sota.callbacks.cycles import OneCycles  # here: that module imports this one

        # OneCycles replaces the scheduler with one sized to each stage; a fit of unknown length cannot run out.
        own_cycles = any(isinstance(callback, OneCycles) for callback in trainer.callbacks)
        if self._batch_sizes_change() and not own_cycles and (trainer.max_epochs or -1) >= 0:
            epochs = range(trainer.current_epoch, trainer.max_epochs)
            steps = sum(epoch_steps(trainer, self.batch_size_at(e)) for e in epochs)
            self._check_room(trainer, within_max_steps(steps, trainer.max_steps, trainer.global_step), "this fit")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Before an epoch's first step: refuse a step scheduler without room for the epoch (see the module doc)."""
        if batch_idx == 0 and self._batch_sizes_change():
            epoch = trainer.current_epoch
            steps = within_max_steps(
                epoch_steps(trainer, self.batch_size_at(epoch)), trainer.max_steps, trainer.global_step
            )
            self._check_room(trainer, steps, f"epoch {epoch}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Size the next epoch's data now: Lightning builds its train loader before its epoch-start hooks."""
        self._apply(trainer, trainer.current_epoch + 1)

    # --- what the hooks apply ------------------------------------------------------------------------------
    def _apply(self, trainer: L.Trainer, epoch: int) -> None:
        stage, dm = self.stage_at(epoch), trainer.datamodule
        dm.train_size = stage.size
        if stage.batch_size is not None:
            dm.batch_size = stage.batch_size

    def _batch_sizes_change(self) -> bool:
        return len({self.batch_size_at(e) for e in self.epochs}) > 1

    def _check_room(self, trainer: L.Trainer, steps: int, what: str) -> None:
        """Refuse a step scheduler with fewer than ``steps`` steps left for ``what`` (the fit, or an epoch)."""
        for config in trainer.lr_scheduler_configs:
            total, done = getattr(config.scheduler, "total_steps", None), config.scheduler.last_epoch
            if config.interval == "step" and total is not None and done + steps > total:
                raise RuntimeError(
                    f"ProgressiveResize: {what} takes {steps} optimizer steps with the stages' batch sizes, but the "
                    f"{type(config.scheduler).__name__} has {total - done} of its {total} left: it was sized for "
                    "batch sizes that do not change (trainer.estimated_stepping_batches counts every epoch at the "
                    "first stage's). Add imagenette_sota.callbacks.OneCycles, which times a one-cycle to the "
                    "stages, or size the scheduler with ProgressiveResize.total_steps(trainer)."
                )


def epoch_steps(trainer: L.Trainer, batch_size: int | None = None) -> int:
    """Optimizer steps of one epoch of this fit at ``batch_size`` (None: the train loader's), as Lightning counts.

    ``schedule.steps_per_epoch`` of this process's share of the train set (``len(loader.dataset)`` ceil-divided over
    the ranks, like Lightning's ``DistributedSampler``) with the loader's ``drop_last`` and the Trainer's
    ``limit_train_batches`` and ``accumulate_grad_batches``.
    """
    loader = trainer.train_dataloader
    return steps_per_epoch(
        math.ceil(len(loader.dataset) / trainer.world_size),
        batch_size or loader.batch_size,
        drop_last=loader.drop_last,
        limit_batches=trainer.limit_train_batches,
        accumulate=trainer.accumulate_grad_batches,
    )
