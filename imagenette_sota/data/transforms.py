"""What the network sees: a batch's transforms on its device (augment or resize, then normalize), and their seeds.

Pure torch, no Lightning: the data module calls them from ``on_after_batch_transfer``, test-time augmentation and
inference through the data module's ``train_transform`` and ``val_transform``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from imagenette_sota import seeds
from imagenette_sota.data import augment as aug
from imagenette_sota.data.normalization import Normalization


def augment_generator(rank: int, step: int, draw: int) -> torch.Generator:
    """A training batch's augmentation seed: (run seed, rank, optimizer step, batch within the step).

    A host generator: the per-sample parameters are a few numbers, and drawing them on the host leaves the
    accelerator's queue without a host sync (augment.prepool_factors reads them).
    """
    return seeds.generator(seeds.derive(seeds.run_seed(), seeds.AUGMENT, rank, step, draw))


class BatchTransforms:
    """The only place pixels change on the device: augment (training) or resize (otherwise), then normalize."""

    def __init__(self, augment: aug.Augment | None, normalization: Normalization) -> None:
        self.augment, self.normalization = augment, normalization

    def train(
        self,
        x: Tensor,
        size: int,
        generator: aug.Generators = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """uint8 presized batch -> augmented (or, without ``augment``, resized), normalized float batch at ``size``.

        ``generator``: one for the batch or one per sample. "batch" statistics are fit from the first batch seen;
        ``reduce`` averages them over the ranks, so every rank normalizes alike.
        """
        out = self.augment(x, size, generator) if self.augment else aug.resize(aug.to_float(x), size)
        if not self.normalization.fitted:
            self.normalization.fit(out, reduce)
        return self.normalization(out)

    def val(self, x: Tensor, size: int) -> Tensor:
        """uint8 presized batch -> the whole view resized to ``size``, normalized; no randomness."""
        return self.normalization(aug.resize(aug.to_float(x), size))
