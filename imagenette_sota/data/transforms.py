"""What the network sees: the data module's transforms of a batch on its device, and fitting "batch" statistics.

``BatchTransforms`` is a mixin of ``ImagenetteDataModule``: Lightning calls its ``on_after_batch_transfer``, test-time
augmentation calls ``train_transform`` and ``val_transform``. It reads the data module's ``trainer``, ``augment``,
``train_size``, ``val_size``, ``normalization``, ``train_set`` and ``batch_size``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from imagenette_sota import seeds
from imagenette_sota.data import augment as aug
from imagenette_sota.data.dataset import first_batch


class BatchTransforms:
    """The only place pixels change on the device: augment (training) or resize (otherwise), then normalize."""

    _draws = (-1, 0)  # (optimizer step, training batches augmented at that step so far)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Training batches get ``train_transform`` (seeded by their position in training), others ``val_transform``."""
        x, y = batch
        if self.trainer is not None and self.trainer.training:
            step = self.trainer.global_step
            self._draws = (step, self._draws[1] + 1 if self._draws[0] == step else 0)  # > 0 only when accumulating
            return self.train_transform(x, self._augment_generator(step, self._draws[1])), y
        return self.val_transform(x), y

    def _augment_generator(self, step: int, draw: int) -> torch.Generator:
        """A training batch's augmentation seed: (run seed, rank, optimizer step, batch within the step).

        A host generator: the per-sample parameters are a few numbers, and drawing them on the host leaves the
        accelerator's queue without a host sync (augment.prepool_factors reads them).
        """
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return seeds.generator(seeds.derive(seeds.run_seed(), seeds.AUGMENT, rank, step, draw))

    def train_transform(self, x: Tensor, generator: aug.Generators = None) -> Tensor:
        """uint8 presized batch -> augmented, normalized float batch at ``train_size`` (random: ``generator``, one
        for the batch or one per sample)."""
        if self.augment:
            out = self.augment(x, self.train_size, generator)
        else:
            out = aug.resize(aug.to_float(x), self.train_size)
        if not self.normalization.fitted:  # "batch": the first training batch's statistics, equal on every rank
            self.normalization.fit(out, self._mean_over_ranks if self.trainer is not None else None)
        return self.normalization(out)

    def val_transform(self, x: Tensor) -> Tensor:
        """uint8 presized batch -> centre view at ``val_size``, normalized; no randomness."""
        return self.normalization(aug.resize(aug.to_float(x), self.val_size or self.train_size))

    def fit_normalization(self) -> None:
        """Fit "batch" statistics now, as fastai's ``Normalize.setups`` does, before any validation uses them.

        From the very batch training starts with - its samples, crops and augmentation at step 0 - so a run fits
        what it fitted when the statistics waited for that batch, and the sanity check validates with them.
        """
        if self.normalization.fitted or self.trainer is None:
            return
        x = first_batch(self.train_set, self.batch_size, self.trainer.world_size, self.trainer.global_rank)
        self.train_transform(x.to(self.trainer.strategy.root_device), self._augment_generator(0, 0))

    def _mean_over_ranks(self, value: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(value, reduce_op="mean")
