"""fastai's optimizer (Adam, decoupled weight decay, none on norms/biases), its schedules and the step counts.

The one-cycle is torch's ``OneCycleLR`` stepped every batch, set up to give exactly fastai's values: fastai puts
batch ``i`` of ``n`` at position ``i / n`` of the cycle (peak at batch ``pct_start * n``; the last batch stops
one step short of ``lr_max / div_final``), while ``OneCycleLR`` puts its peak at step ``pct_start * steps - 1``
and its end at step ``steps - 1``. A cycle of ``n + 1`` steps with the peak moved to step ``pct_start * n``
makes the two agree at every batch.

fastai's ``fit_flat_cos`` is the same curve with ``div=1`` (``combined_cos(pct_start, lr, lr, lr / div_final)``:
flat, then cosine) and no momentum schedule: ``flat_cos`` gives that ``Cycle`` (``moms=None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from imagenette_sota import optim
from imagenette_sota.checks import check_numbers

MOMS = (0.95, 0.85)  # beta1 at the start and end of the cycle, and at its peak


@dataclass(frozen=True)
class Cycle:
    """One fastai one-cycle: lr_max/div -> lr_max (cosine, first pct_start) -> lr_max/div_final (cosine).

    ``moms``: beta1 at the ends and at the peak, cycled inversely to the lr; None leaves the optimizer's beta1.
    """

    lr_max: float
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float] | None = MOMS

    def __post_init__(self) -> None:
        check_numbers(
            lr_max=(self.lr_max, "> 0", self.lr_max > 0),
            pct_start=(self.pct_start, "in (0, 1)", 0 < self.pct_start < 1),
            div=(self.div, "> 0", self.div > 0),
            div_final=(self.div_final, "> 0", self.div_final > 0),
        )
        if self.moms is not None:  # a list from YAML or a checkpoint's hyperparameters
            object.__setattr__(self, "moms", tuple(self.moms))


def flat_cos(lr_max: float, pct_start: float = 0.75, div_final: float = 1e5) -> Cycle:
    """fastai's fit_flat_cos: lr_max flat for the first pct_start of the steps, then cosine to lr_max/div_final."""
    return Cycle(lr_max, pct_start=pct_start, div=1.0, div_final=div_final, moms=None)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters: weight decay on matrices and kernels (ndim >= 2), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def adam(model: nn.Module, lr: float, weight_decay: float = optim.WEIGHT_DECAY) -> torch.optim.AdamW:
    """fastai's Adam (``optim.adam``) over ``model``'s parameter groups, with true weight decay."""
    return optim.adam(param_groups(model, weight_decay), lr)


def one_cycle(optimizer: torch.optim.Optimizer, cycle: Cycle, total_steps: int) -> OneCycleLR:
    """Start `cycle` on `optimizer` over `total_steps` batches (replaces any previous cycle's lr and beta1)."""
    n = int(total_steps)
    return OneCycleLR(
        optimizer,
        max_lr=cycle.lr_max,
        total_steps=n + 1,  # fastai's position i / n for batch i: step n (after the last batch) ends the cycle
        pct_start=(cycle.pct_start * n + 1) / (n + 1),  # OneCycleLR peaks at step pct_start * total_steps - 1
        anneal_strategy="cos",
        cycle_momentum=cycle.moms is not None,
        base_momentum=(cycle.moms or MOMS)[1],
        max_momentum=(cycle.moms or MOMS)[0],
        div_factor=cycle.div,
        final_div_factor=cycle.div_final / cycle.div,  # OneCycleLR's final lr is its initial lr / this
        three_phase=False,
    )


def fine_tune(epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1) -> tuple[tuple[int, Cycle], ...]:
    """fastai's fine_tune as (epochs, cycle) pairs; the freeze is a no-op for a network trained from scratch.

    fastai's freeze() and unfreeze() both call ``opt.clear_state()``: each of the two cycles starts with fresh Adam
    moments and step counts (``OneCycles(fine_tune=...)`` does that).
    """
    return (
        (freeze_epochs, Cycle(base_lr, pct_start=0.99)),
        (epochs, Cycle(base_lr / 2, pct_start=0.3, div=5.0)),
    )


@dataclass(frozen=True)
class FineTune:
    """fastai's ``fine_tune(epochs, base_lr, freeze_epochs)`` called at epoch ``start_epoch`` of a fit."""

    start_epoch: int
    epochs: int
    base_lr: float = 2e-3
    freeze_epochs: int = 1

    def cycles(self) -> dict[int, Cycle]:
        """{epoch: the cycle starting there}: the frozen cycle at start_epoch, the unfrozen one after it."""
        (freeze, frozen), (_, unfrozen) = fine_tune(self.epochs, self.base_lr, self.freeze_epochs)
        return {self.start_epoch: frozen, self.start_epoch + freeze: unfrozen}

    @property
    def end_epoch(self) -> int:
        """The epoch after the last one of fine_tune: the fit's max_epochs when it ends the fit."""
        return self.start_epoch + self.freeze_epochs + self.epochs


def steps_per_epoch(
    samples: int, batch_size: int, drop_last: bool = True, limit_batches: int | float = 1.0, accumulate: int = 1
) -> int:
    """Optimizer steps of one epoch over ``samples`` (this process's share) at ``batch_size``, as Lightning counts.

    Batches: whole batches with ``drop_last``, else the last partial one too; ``limit_batches`` (the Trainer's
    ``limit_train_batches``) caps them at an int or keeps a fraction (rounded down); then one optimizer step per
    ``accumulate`` batches, the last group possibly short.
    """
    batches = samples // batch_size if drop_last else math.ceil(samples / batch_size)
    batches = min(batches, limit_batches) if isinstance(limit_batches, int) else int(batches * limit_batches)
    return math.ceil(batches / accumulate)


def epoch_steps(trainer: L.Trainer, batch_size: int | None = None) -> int:
    """Optimizer steps of one epoch of ``trainer``'s fit at ``batch_size`` (None: the train loader's).

    ``steps_per_epoch`` of this process's share of the train set (ceil-divided over the ranks, like Lightning's
    ``DistributedSampler``) with the loader's ``drop_last`` and the Trainer's batch limit and accumulation.
    """
    loader = trainer.train_dataloader
    return steps_per_epoch(
        math.ceil(len(loader.dataset) / trainer.world_size),
        batch_size or loader.batch_size,
        drop_last=loader.drop_last,
        limit_batches=trainer.limit_train_batches,
        accumulate=trainer.accumulate_grad_batches,
    )


def within_max_steps(steps: int, max_steps: int, global_step: int) -> int:
    """``steps`` from ``global_step`` on, cut where a Trainer's ``max_steps`` (-1: none) ends the fit mid-epoch."""
    return steps if max_steps < 0 else max(0, min(steps, max_steps - global_step))
