"""OneCycles: fastai's consecutive ``fit_one_cycle`` calls inside one Lightning fit, each timed to its stage.

    OneCycles(fine_tune=FineTune(start_epoch=4, epochs=5, base_lr=1e-3))  # the book's fine_tune(5, 1e-3) from epoch 4

At each epoch that begins a cycle the module's step scheduler becomes ``schedule.one_cycle`` over the optimizer steps
until the next cycle, counted with a ``ProgressiveResize``'s batch sizes. It is a ``OneCycleLR``, whose state holds
the whole cycle: Lightning's checkpoint resumes it exactly, and the callback keeps no state of its own.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import OneCycleLR

from imagenette_sota.callbacks.progressive import ProgressiveResize
from imagenette_sota.schedule import Cycle, FineTune, epoch_steps, one_cycle, within_max_steps


class OneCycles(Callback):
    """A new fastai one-cycle at chosen epochs, each timed to the next (public trainer state only)."""

    def __init__(
        self, schedule: dict[int, Cycle] | None = None, fine_tune: FineTune | None = None, clear_state: bool = False
    ) -> None:
        """Args:
        schedule: {epoch: the cycle that starts there}, epochs counted from 0.
        fine_tune: fastai's fine_tune at its start_epoch: two cycles, each after clearing the optimizer state.
        clear_state: also clear the optimizer state before each cycle of ``schedule`` after the first epoch.

        Clearing empties Adam's moments and step counts, as fastai's freeze() and unfreeze() do.
        """
        schedule = dict(schedule or {})
        bad = [k for k in schedule if not isinstance(k, int) or k < 0]
        if bad:
            raise ValueError(f"OneCycles schedule epochs must be integers >= 0, got {bad}")
        for epoch, cycle in schedule.items():
            if not isinstance(cycle, Cycle):
                raise TypeError(f"OneCycles schedule[{epoch}]={cycle!r} must be a schedule.Cycle")
        clears = {k for k in schedule if k > 0} if clear_state else set()
        if fine_tune is not None:
            tuned = fine_tune.cycles()
            if overlap := sorted(schedule.keys() & tuned.keys()):
                raise ValueError(f"OneCycles: the schedule and fine_tune both start a cycle at epoch(s) {overlap}")
            schedule.update(tuned)
            clears |= set(tuned)
        self.schedule, self.clears, self.fine_tune = schedule, clears, fine_tune
        self.epochs = sorted(schedule)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse, before anything is written, a fit of unknown length in epochs, or one whose length would stretch or
        cut fine_tune's last cycle (fast_dev_run aside)."""
        if stage != "fit":
            return
        self.check_length(trainer, pl_module)
        tune = self.fine_tune
        if tune is None or trainer.fast_dev_run:
            return
        last = tune.start_epoch + tune.freeze_epochs
        end = next((k for k in self.epochs if k > last), trainer.max_epochs)
        if end != tune.end_epoch:
            raise ValueError(
                f"max_epochs={trainer.max_epochs!r}: fine_tune from epoch {tune.start_epoch} ends at epoch "
                f"{tune.end_epoch}, but its last cycle would run to epoch {end}: set trainer.max_epochs to "
                f"{tune.end_epoch} (or start the next cycle there)"
            )

    def check_length(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse a fit of unknown length in epochs when a cycle would start: cycles are timed by epochs."""
        starts = self.epochs or [0] * (getattr(pl_module, "cycle", None) is not None)
        if starts and (trainer.max_epochs is None or trainer.max_epochs < 0):
            raise MisconfigurationException(  # a setting's error: the CLI prints it as one message, exit status 2
                f"max_epochs={trainer.max_epochs!r}: OneCycles times its one-cycles by epochs, so the fit needs a "
                "length in epochs: set trainer.max_epochs (--trainer.max_epochs N)"
            )

    def cycle_at(self, epoch: int, pl_module: L.LightningModule) -> Cycle | None:
        """The cycle that starts at ``epoch``: the schedule's, or at epoch 0 the module's ``cycle``; else None.

        The first epoch always begins a cycle when it can: a whole-fit estimate (``estimated_stepping_batches``, every
        epoch at the first batch size) then never runs with a stale length. ``ProgressiveResize`` reads this too.
        """
        if epoch in self.schedule:
            return self.schedule[epoch]
        return getattr(pl_module, "cycle", None) if epoch == 0 else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start this epoch's cycle, if it begins one (after clearing the optimizer state, if asked)."""
        epoch = trainer.current_epoch
        cycle = self.cycle_at(epoch, pl_module)
        if cycle is None:
            return
        configs = trainer.lr_scheduler_configs
        if len(trainer.optimizers) != 1 or len(configs) != 1 or configs[0].interval != "step":
            raise RuntimeError(
                "OneCycles starts one-cycles: configure_optimizers must return one optimizer and one lr scheduler "
                "with interval='step'"
            )
        if not isinstance(configs[0].scheduler, OneCycleLR):
            raise TypeError(
                f"OneCycles replaces the module's {type(configs[0].scheduler).__name__} with a OneCycleLR; "
                "configure a OneCycleLR so that a resumed run restores the running cycle into it"
            )
        end = next((k for k in self.epochs if k > epoch), trainer.max_epochs)
        resize = next((c for c in trainer.callbacks if isinstance(c, ProgressiveResize)), None)
        epochs = range(epoch, end)
        steps = resize.steps(trainer, epochs) if resize else len(epochs) * epoch_steps(trainer)
        steps = within_max_steps(steps, trainer.max_steps, trainer.global_step)  # a budget's last epoch stops early
        optimizer = trainer.optimizers[0]
        if epoch in self.clears:
            # fastai's opt.clear_state(): moments and step counts start again (LookAhead: its slow weights too)
            getattr(optimizer, "clear_state", optimizer.state.clear)()
        configs[0].scheduler = one_cycle(optimizer, cycle, steps)
