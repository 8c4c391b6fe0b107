"""ProgressiveResize: the training image size and batch size of each stage of a fit, set epoch by epoch.

    ProgressiveResize({0: Stage(128, 128), 4: Stage(224, 64)})  # the book's recipe: 128 px, then 224 px from epoch 4
    ProgressiveResize(ramp=Ramp(160, 192, start_epoch=11, end_epoch=13, batch_size=256))  # FFCV's smooth resizing

It sets the data module's public ``train_size`` and ``batch_size`` (any data module with both works; validation
runs at its ``val_size``). The one-cycles of the stages are ``OneCycles``'s (callbacks/cycles.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from imagenette_sota.schedule import Cycle, epoch_steps, within_max_steps


@runtime_checkable
class StartsCycles(Protocol):
    """A callback that, at the epochs where ``cycle_at`` gives a cycle, replaces the step scheduler with one sized to
    the stages (``OneCycles``)."""

    def cycle_at(self, epoch: int, pl_module: L.LightningModule) -> Cycle | None: ...


@dataclass(frozen=True)
class Stage:
    """From its epoch on: train image side (px) and batch size per device.

    ``None`` keeps the previous stage's size or batch size (the data module's batch size before any stage sets one).
    Under DDP the global batch is batch_size x devices x num_nodes; no learning rate is rescaled with it.
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
    """Progressive resizing: per-epoch training image size and batch size (public trainer state only)."""

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

    def steps(self, trainer: L.Trainer, epochs: Iterable[int]) -> int:
        """Optimizer steps of ``epochs`` of this fit with the stages' batch sizes, as Lightning counts them.

        Needs the train loader (``trainer.estimated_stepping_batches`` builds it, if called first).
        """
        return sum(epoch_steps(trainer, self.batch_size_at(e)) for e in epochs)

    def total_steps(self, trainer: L.Trainer) -> int:
        """Optimizer steps of the whole fit (``max_epochs``) with the stages' batch sizes: what
        ``trainer.estimated_stepping_batches`` would be if it knew the stages (size a module's own scheduler with it).
        """
        return self.steps(trainer, range(trainer.max_epochs))

    # --- hooks ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, rebuild loaders if batch sizes change, size the first epoch's data.

        Here: before Lightning builds the first train loader and ``configure_optimizers`` counts its batches.
        """
        if stage != "fit":
            return
        missing = [a for a in ("train_size", "batch_size") if not hasattr(trainer.datamodule, a)]
        if missing:
            raise AttributeError(
                f"ProgressiveResize needs trainer.fit(..., datamodule=dm) with public {missing} on the data module"
            )
        if self._batch_sizes_change() and trainer.reload_dataloaders_every_n_epochs != 1:
            # a new batch size needs a new train loader
            rank_zero_info("ProgressiveResize: batch sizes change, so train loaders are rebuilt every epoch")
            trainer.reload_dataloaders_every_n_epochs = 1
        self._apply(trainer, trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch a fit starts with is known now (a resumed one's too): size its data; check the step scheduler.

        A data module without state of its own gets its sizes back here on resume.
        """
        self._apply(trainer, trainer.current_epoch)
        if self._batch_sizes_change():
            self._check_room(trainer, pl_module)

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

    def _check_room(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse a step scheduler without room for the steps it will run, before the first of them.

        ``trainer.estimated_stepping_batches`` counts every epoch at the first stage's batch size, so a scheduler
        sized with it may run out. It runs until the fit ends or a ``StartsCycles`` callback replaces it.
        """
        if trainer.max_epochs is None or trainer.max_epochs < 0:  # a fit of unknown length: nothing to count
            return
        starts = [c for c in trainer.callbacks if isinstance(c, StartsCycles)]
        epochs = range(trainer.current_epoch, trainer.max_epochs)
        end = next((e for e in epochs if any(c.cycle_at(e, pl_module) is not None for c in starts)), epochs.stop)
        steps = within_max_steps(self.steps(trainer, range(epochs.start, end)), trainer.max_steps, trainer.global_step)
        what = "this fit" if end == epochs.stop else f"epochs {epochs.start} to {end - 1} (until a new cycle)"
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
