"""Lightning's learning-rate range test with fastai's "valley" suggestion."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.utilities.parsing import lightning_setattr

log = logging.getLogger(__name__)


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's valley: the lr about halfway along the longest strictly decreasing subsequence of losses."""
    # longest[i]: length of the longest strictly decreasing subsequence of losses that ends at i.
    longest: list[int] = []
    for i, loss in enumerate(losses):
        longest.append(1 + max((longest[j] for j in range(i) if losses[j] > loss), default=0))
    end = max(range(len(longest)), key=longest.__getitem__)  # where the longest valley ends (first such i)
    length = longest[end]
    # fastai's offsets, kept exactly: from end - length, a third plus a sixth of the length (about halfway,
    # although fastai's docs say two thirds). max(0, ...) only changes fastai's answer for a valley shorter
    # than 3 at the very start, where fastai's index -1 picks the last (largest) lr.
    idx = max(0, end - length + int(length / 3) + int(length / 6))
    return float(lrs[idx])


def suggest(lrs: Sequence[float], losses: Sequence[float], skip_begin: int, skip_end: int = 5) -> float | None:
    """Valley lr of a range test like fastai's lr_find: trimmed ends, cut at the first non-finite loss."""
    lrs, losses = lrs[skip_begin : len(lrs) - skip_end], losses[skip_begin : len(losses) - skip_end]
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    return valley(lrs[:finite], losses[:finite]) if finite >= 2 else None


class LRFinder(LearningRateFinder):
    """LearningRateFinder that suggests fastai's valley lr and restarts the optimizer and one-cycle with it.

    fastai's range defaults (1e-7 to 10 over 100 batches). The losses are smoothed like fastai's (beta 0.98,
    debiased); like ``lr_find`` the first ``num_training_steps // 10`` and the last 5 points are ignored.
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "lr",
    ) -> None:
        """Args:
        min_lr: first lr of the range. max_lr: last lr of the range.
        num_training_steps: batches in the range test. mode: 'exponential' or 'linear' lr steps.
        early_stop_threshold: stop once the smoothed loss exceeds this times the best one (None: never).
        update_attr: set the module's `attr_name` to the suggestion and rebuild its optimizer and schedule.
        attr_name: the module attribute or hyperparameter holding the peak lr.
        """
        # Lightning's own update applies its steepest-gradient suggestion; this class applies the valley.
        super().__init__(
            min_lr=min_lr,
            max_lr=max_lr,
            num_training_steps=num_training_steps,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=False,
        )
        self.num_training_steps, self.update_attr, self.attr_name = num_training_steps, update_attr, attr_name
        self.suggestion: float | None = None

    def lr_find(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run the range test, then suggest (and optionally apply) the valley lr."""
        super().lr_find(trainer, pl_module)
        if self.optimal_lr is None:  # skipped, e.g. under fast_dev_run
            return
        results = self.optimal_lr.results
        self.suggestion = suggest(results["lr"], results["loss"], skip_begin=self.num_training_steps // 10)
        if self.suggestion is None:
            log.warning("LRFinder: too few finite losses for a suggestion; keeping the configured lr")
        elif self.update_attr:
            lightning_setattr(pl_module, self.attr_name, self.suggestion)
            trainer.strategy.setup_optimizers(trainer)  # the one-cycle was built with the old lr
            log.info("LRFinder: lr set to the valley suggestion %.3g", self.suggestion)
