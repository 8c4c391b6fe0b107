"""ProgressiveResize: the image size, batch size and one-cycle of each stage of a fit, set epoch by epoch.

The book's recipe (4 epochs at 128 px, batch 128, ``fit_one_cycle(4, 3e-3)``, then ``fine_tune(5, 1e-3)`` at
224 px, batch 64: 10 epochs, since fine_tune is 1 epoch at pct_start 0.99 plus 5 at lr / 2)::

    from imagenette_sota.schedule import fine_tune

    (freeze, frozen), (_, unfrozen) = fine_tune(5, 1e-3)
    model = ImagenetteClassifier(lr=3e-3)  # epoch 0's cycle: the module's own (``model.cycle``)
    resize = ProgressiveResize({0: Stage(128, 128), 4: Stage(224, 64, frozen), 4 + freeze: Stage(cycle=unfrozen)})
    L.Trainer(max_epochs=10, callbacks=[resize]).fit(model, datamodule=ImagenetteDataModule("imagenette2-320"))

and as LightningCLI YAML (``imagenette-sota fit --config this.yaml``)::

    model: {lr: 3.0e-3}
    trainer:
      max_epochs: 10
      callbacks:
        - class_path: imagenette_sota.callbacks.ProgressiveResize
          init_args:
            schedule:
              0: {size: 128, batch_size: 128}
              4: {size: 224, batch_size: 64, cycle: {lr_max: 1.0e-3, pct_start: 0.99}}
              5: {cycle: {lr_max: 5.0e-4, pct_start: 0.3, div: 5.0}}

FFCV-style smooth resizing (160 -> 192 px over epochs 11..13 of 16, batch 256 at 192 px, larger below it, one
cycle for the whole fit, validation at 224 px)::

    ProgressiveResize(ramp=Ramp(160, 192, start_epoch=11, end_epoch=13, batch_size=256), val_size=224)

What it sets, and when (public state only):

- ``datamodule.train_size``, ``val_size`` and (if a stage gives one) ``batch_size``, for epoch e + 1 at the end
  of epoch e (after its validation), for the first epoch in ``setup`` (before Lightning builds the first train
  loader and ``configure_optimizers`` counts its batches). Any data module with these three public attributes
  works; ``val_size`` is set to the callback's ``val_size``, or to the train size when that is None.
- A new batch size needs a new train loader: when the stages change it, the callback sets the Trainer's public
  ``reload_dataloaders_every_n_epochs`` to 1 (loaders are then rebuilt every epoch).
- At the start of an epoch that begins a cycle, ``trainer.lr_scheduler_configs[0].scheduler`` becomes
  ``one_cycle(optimizer, cycle, steps)``, with ``steps`` the optimizer steps until the next cycle starts (or
  ``max_epochs``), summed epoch by epoch with each epoch's batch size: per-process samples (after the
  distributed sampler) // batch size (drop_last; ceil otherwise), cut by ``limit_train_batches``, divided by
  ``accumulate_grad_batches`` (rounded up). The first epoch always begins a cycle: its stage's, or else the
  module's ``cycle`` attribute (a ``schedule.Cycle``; ImagenetteClassifier has one), so the module's one
  whole-fit estimate never runs with a stale length. A module with neither keeps its own scheduler until the
  first stage that names a cycle.
- The module must configure one optimizer and one ``interval="step"`` ``OneCycleLR`` (as ``configure_optimizers``
  of ImagenetteClassifier does) whenever a cycle is started: on resume Lightning loads the checkpointed state of
  the running replacement into that scheduler, and a OneCycleLR's state holds the whole cycle (length, phases,
  position), so the resumed run continues the replacement exactly. The callback's own state is the epoch the data
  module is configured for, re-applied on resume before the first train loader is rebuilt.
- Logs ``train/image_size`` and ``train/batch_size`` every epoch.

Multi-GPU (``trainer: {strategy: ddp, devices: N}``): ``batch_size`` is per device, the global batch is
batch_size x devices x num_nodes, and no learning rate is rescaled with it: scale ``lr`` and the cycles' ``lr_max``
yourself if you want to. Lightning's ``sync_batchnorm: true`` computes BatchNorm statistics over the global batch
(worth it when the per-device batch is small; it costs a synchronization per BatchNorm layer). Validation at
``val_size`` is independent of the train size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.optim.lr_scheduler import OneCycleLR

from imagenette_sota.schedule import Cycle, one_cycle


@dataclass(frozen=True)
class Stage:
    """From its epoch on: train image side (px), batch size per device, and a one-cycle that starts there.

    ``None`` keeps the previous stage's size or batch size (the data module's batch size before any stage sets
    one); ``cycle=None`` continues the running cycle.
    """

    size: int | None = None
    batch_size: int | None = None
    cycle: Cycle | None = None

    def __post_init__(self) -> None:
        for name in ("size", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Stage {name}={value!r} must be a positive integer (or None to keep the last)")
        if self.size is None and self.batch_size is None and self.cycle is None:
            raise ValueError("a Stage must set a size, a batch_size or a cycle")


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
        """The ramp as one stage per epoch up to end_epoch (no cycles: the first epoch's runs to the end)."""
        stages = {}
        for epoch in range(self.end_epoch + 1):
            size = self.size_at(epoch)
            batch = None if self.batch_size is None else self.batch_size * self.max_size**2 // size**2
            stages[epoch] = Stage(size, batch)
        return stages


class ProgressiveResize(Callback):
    """Progressive resizing: per-epoch image size and batch size, and a one-cycle per stage (see the module doc)."""

    def __init__(
        self,
        schedule: dict[int, Stage] | None = None,
        ramp: Ramp | None = None,
        val_size: int | None = None,
    ) -> None:
        """Args:
        schedule: {epoch: Stage}, epochs counted from 0; epoch 0 must give a size. Not with ``ramp``.
        ramp: a smooth size ramp instead of a schedule.
        val_size: validation image side (px); None: the current train size.
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
        if val_size is not None and val_size < 1:
            raise ValueError(f"val_size={val_size} must be a positive integer (or None to follow the train size)")
        self.schedule, self.val_size = schedule, val_size
        self.epochs = sorted(schedule)
        self._epoch = 0  # the epoch the data module is configured for

    def stage_at(self, epoch: int) -> Stage:
        """The stage in force at `epoch`: the size and batch size last set, and the cycle starting exactly there."""
        earlier = [self.schedule[k] for k in reversed(self.epochs) if k <= epoch]
        size = next(s.size for s in earlier if s.size is not None)
        batch_size = next((s.batch_size for s in earlier if s.batch_size is not None), None)
        starting = self.schedule.get(epoch)
        return Stage(size, batch_size, starting.cycle if starting else None)

    # --- hooks ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the data module, rebuild loaders if batch sizes change, configure the first epoch's data."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        missing = [a for a in ("train_size", "val_size", "batch_size") if not hasattr(dm, a)]
        if missing:
            raise AttributeError(
                f"ProgressiveResize needs trainer.fit(..., datamodule=dm) with public {missing} on the data module"
            )
        if (
            len({self.stage_at(e).batch_size for e in self.epochs}) > 1
            and trainer.reload_dataloaders_every_n_epochs != 1
        ):
            rank_zero_info("ProgressiveResize: batch sizes change, so train loaders are rebuilt every epoch")
            trainer.reload_dataloaders_every_n_epochs = 1
        self._epoch = trainer.current_epoch
        self._configure(trainer, self._epoch)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After a checkpoint restored this callback: configure the data for the epoch it was saved for."""
        self._configure(trainer, self._epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start this epoch's cycle, if it begins one; log the sizes."""
        epoch = trainer.current_epoch
        stage = self.stage_at(epoch)
        cycle = stage.cycle or (getattr(pl_module, "cycle", None) if epoch == 0 else None)
        if cycle is not None:
            self._start_cycle(trainer, epoch, cycle)
        log = {"train/image_size": stage.size, "train/batch_size": trainer.train_dataloader.batch_size}
        for name, value in log.items():
            pl_module.log(name, float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Configure the next epoch's data now: Lightning builds its train loader before its epoch-start hooks."""
        self._configure(trainer, trainer.current_epoch + 1)

    # --- what the hooks apply ------------------------------------------------------------------------------
    def _configure(self, trainer: L.Trainer, epoch: int) -> None:
        stage, dm = self.stage_at(epoch), trainer.datamodule
        dm.train_size = stage.size
        dm.val_size = self.val_size if self.val_size is not None else stage.size
        if stage.batch_size is not None:
            dm.batch_size = stage.batch_size
        self._epoch = epoch

    def _start_cycle(self, trainer: L.Trainer, epoch: int, cycle: Cycle) -> None:
        configs = trainer.lr_scheduler_configs
        if len(trainer.optimizers) != 1 or len(configs) != 1 or configs[0].interval != "step":
            raise RuntimeError(
                "ProgressiveResize starts one-cycles: configure_optimizers must return one optimizer and one "
                "lr scheduler with interval='step'"
            )
        if not isinstance(configs[0].scheduler, OneCycleLR):
            raise TypeError(
                f"ProgressiveResize replaces the module's {type(configs[0].scheduler).__name__} with a OneCycleLR; "
                "configure a OneCycleLR so that a resumed run restores the running cycle into it"
            )
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise ValueError("ProgressiveResize times its cycles by epochs: set the Trainer's max_epochs")
        end = next((k for k in self.epochs if k > epoch and self.schedule[k].cycle), trainer.max_epochs)
        loader = trainer.train_dataloader
        steps = sum(self._steps(trainer, self.stage_at(e).batch_size or loader.batch_size) for e in range(epoch, end))
        configs[0].scheduler = one_cycle(trainer.optimizers[0], cycle, steps)

    @staticmethod
    def _steps(trainer: L.Trainer, batch_size: int) -> int:
        """Optimizer steps of one epoch at `batch_size`, as Lightning will count them."""
        loader = trainer.train_dataloader
        samples = len(loader.sampler)  # this process's share under a distributed sampler
        batches = samples // batch_size if loader.drop_last else math.ceil(samples / batch_size)
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return math.ceil(batches / trainer.accumulate_grad_batches)

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The epoch the data module is configured for (the scheduler's state is Lightning's to save)."""
        return {"epoch": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; ``on_fit_start`` applies it."""
        self._epoch = state_dict["epoch"]
