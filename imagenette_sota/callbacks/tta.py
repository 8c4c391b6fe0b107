"""Test-time augmentation (fastai's ``Learner.tta``), each sample predicted exactly once, also under DDP.

After a fit::

    probs, targets = tta(trainer, model, datamodule)  # fastai's defaults: TTASettings(n=4, beta=0.25)
    probs, targets = tta(trainer, model, datamodule, TTASettings(mode="flip", beta=0.5))  # centre and mirror
    probs, targets = tta(trainer, model, datamodule, TTASettings(mode="five_crop"))  # corners + centre, 87.5% crops

``tta`` runs ``trainer.predict`` on a ``TTAPredictor`` (the model wrapped with the data module's transforms) with a
``GatherPredictions`` callback. The data module is the single source of the views: its ``predict_dataloader()``
yields raw (presized uint8) ``(x, y)`` batches in dataset order, ``val_transform(x)`` makes the centre view and
``train_transform(x, generator)`` the training augmentation drawn from ``generator``, at the data module's
``train_size`` (after ProgressiveResize: the last stage's). Like fastai's ``tta``, which runs the dataset in training
mode, every augmented view also starts from its own presize crop: ``tta_dataloader(n, seed)`` yields the centre crop
and n crops whose positions along the long side are seeded per (seed, sample, view). ImagenetteDataModule has all
four; any data module with the first three works (its views then share the centre crop). Given to
``trainer.predict`` as ``datamodule``, its ``on_after_batch_transfer`` would turn every batch into the centre view
first, so the predictor asks it for the loader itself.

Under DDP Lightning splits predict loaders without padding (``UnrepeatedDistributedSampler``); the callback puts
every rank's rows at their dataset indices, sums across ranks, checks that each sample was predicted exactly once
and leaves the whole result, in dataset order, on every rank. With ``ddp_spawn`` the ranks are other processes:
rank 0 also writes the result to a file that ``tta`` reads back. (Under ``ddp_spawn`` a data module's state set
during ``fit`` - progressive sizes, batch statistics - stays in the worker processes: restore it from the
checkpoint, or use ``strategy="ddp"``.) The batch augmentation of the views draws from a host generator seeded
from (``seed``, rank, batch): runs repeat, the views take nothing from the global RNG streams, and the device never
waits on the host; but a sample gets other draws on another number of ranks, so augmented TTA under DDP matches a
single process in distribution, not bit for bit (plain, flip and five-crop predictions do match exactly).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torchvision.transforms.v2.functional import five_crop

from imagenette_sota import seeds
from imagenette_sota.data.augment import Generators
from imagenette_sota.distributed import destroy_process_group_at_exit

Mode = Literal["augment", "flip", "five_crop"]


@dataclass(frozen=True)
class TTASettings:
    """Which views test-time augmentation predicts and how it combines them (defaults: fastai's ``tta``).

    n: augmented passes (mode "augment" only). beta: weight of the centre view (fastai: 0.25).
    use_max: the elementwise max over the centre and the views instead of the weighted mean.
    mode: "augment" (n passes of the training augmentation), "flip" (the mirrored centre view) or
        "five_crop" (the four corners and the centre, each a ``crop`` fraction of the presized side).
    seed: seeds the augmented views: their presize crops per sample and view, their augmentation per rank and batch.
    """

    n: int = 4
    beta: float = 0.25
    use_max: bool = False
    mode: Mode = "augment"
    crop: float = 0.875
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("augment", "flip", "five_crop"):
            raise ValueError(f"mode={self.mode!r}: choose 'augment', 'flip' or 'five_crop'")
        if self.n < 0 or not 0 <= self.beta <= 1 or not 0 < self.crop <= 1:
            raise ValueError(
                f"need n >= 0, 0 <= beta <= 1 and 0 < crop <= 1; got n={self.n}, beta={self.beta}, crop={self.crop}"
            )


def combine(centre: Tensor, views: Sequence[Tensor], beta: float = 0.25, use_max: bool = False) -> Tensor:
    """fastai's TTA: beta * centre + (1 - beta) * mean(views), or the elementwise max of all; no views: centre."""
    if not views:
        return centre
    stacked = torch.stack(list(views))  # (n, B, C)
    if use_max:
        return torch.maximum(centre, stacked.amax(0))
    return torch.lerp(stacked.mean(0), centre, beta)


class TTAPredictor(L.LightningModule):
    """``predict_step``: TTA and plain (centre-view) probabilities and the targets of one raw ``(x, y)`` batch."""

    def __init__(self, model: nn.Module, data: L.LightningDataModule, settings: TTASettings = TTASettings()) -> None:
        """Args:
        model: maps normalized images to logits.
        data: provides predict_dataloader(), val_transform(x) and train_transform(x) (see the module doc).
        settings: the views and how they combine.
        """
        super().__init__()
        self.model, self.data, self.settings = model, data, settings

    def prepare_data(self) -> None:
        """The data module's own preparation (download / extract once)."""
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        """Set up the data module in this process (each DDP rank is its own process)."""
        destroy_process_group_at_exit()
        self.data.setup(stage)

    @property
    def redraws_crops(self) -> bool:
        """Whether each augmented view starts from its own presize crop (the data module has ``tta_dataloader``)."""
        settings = self.settings
        return settings.mode == "augment" and settings.n > 0 and hasattr(self.data, "tta_dataloader")

    def predict_dataloader(self) -> Any:
        """The data module's raw predict batches; Lightning splits them across ranks without repeats."""
        if self.redraws_crops:
            return self.data.tta_dataloader(self.settings.n, self.settings.seed)
        return self.data.predict_dataloader()

    def views(self, x: Tensor, generator: Generators = None) -> Iterator[Tensor]:
        """The extra views of a raw batch (B, 3, P, P), or (B, 1 + n, 3, P, P) with a crop per view, normalized.

        ``generator``: one for the batch, or one per sample (its draws then do not depend on the rest of the batch).
        """
        settings = self.settings
        if settings.mode == "augment":
            for view in range(settings.n):
                yield self.data.train_transform(x[:, 1 + view] if x.ndim == 5 else x, generator)
        elif settings.mode == "flip":
            yield self.data.val_transform(x.flip(-1))
        else:
            side = round(settings.crop * min(x.shape[-2:]))
            yield from (self.data.val_transform(c) for c in five_crop(x, [side, side]))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """{"probs": TTA probabilities, "plain": centre-view probabilities, "targets": labels}."""
        x, y = batch
        generator = seeds.generator(seeds.derive(self.settings.seed, seeds.AUGMENT, self.global_rank, batch_idx))
        return self.predict(x, generator) | {"targets": y}

    def predict(self, x: Tensor, generator: Generators = None) -> dict[str, Tensor]:
        """{"probs": TTA probabilities, "plain": centre-view probabilities} of a raw batch (see ``views``)."""
        plain = self.model(self.data.val_transform(x[:, 0] if x.ndim == 5 else x)).float().softmax(1)
        settings = self.settings
        views = [self.model(v).float().softmax(1) for v in self.views(x, generator)]
        return {"probs": combine(plain, views, settings.beta, settings.use_max), "plain": plain}


def gather_in_order(strategy: Strategy, size: int, indices: Tensor, values: Tensor) -> Tensor:
    """Rows `values` of dataset rows `indices` from every rank, as one (size, ...) tensor on every rank."""
    full = values.new_zeros((size, *values.shape[1:]))
    full[indices] = values
    return strategy.reduce(full, reduce_op="sum")  # each row is nonzero on one rank only: the sum is exact


class GatherPredictions(BasePredictionWriter):
    """After ``trainer.predict``: the per-batch dicts of tensors as one dict in dataset order, on every rank.

    Raises if a sample was predicted twice or not at all. ``path``: rank 0 also saves the result there.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path
        self.result: dict[str, Tensor] | None = None

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Gather this rank's predictions with the others', by dataset index."""
        if len(batch_indices) != 1:
            raise ValueError(f"GatherPredictions handles one predict dataloader, got {len(batch_indices)}")
        device = pl_module.device
        indices = torch.tensor([i for batch in batch_indices[0] for i in batch], dtype=torch.long, device=device)
        size = len(trainer.predict_dataloaders.dataset)
        counts = trainer.strategy.reduce(indices.bincount(minlength=size), reduce_op="sum")
        if not bool((counts == 1).all()):
            raise RuntimeError(
                f"each sample must be predicted once: {int((counts == 0).sum())} missing, "
                f"{int((counts > 1).sum())} repeated (a padding sampler, or images skipped as unreadable?)"
            )
        result = {}
        for key in predictions[0]:
            values = torch.cat([p[key] for p in predictions]).to(device)
            if len(values) != len(indices):
                raise RuntimeError(f"{len(values)} {key!r} rows for {len(indices)} indices: were images skipped?")
            result[key] = gather_in_order(trainer.strategy, size, indices, values).cpu()
        self.result = result
        if self.path is not None and trainer.is_global_zero:
            torch.save(result, self.path)


def tta(
    trainer: L.Trainer, model: nn.Module, datamodule: L.LightningDataModule, settings: TTASettings = TTASettings()
) -> tuple[Tensor, Tensor]:
    """TTA probabilities (N, C) and targets (N,) of the predict set in dataset order; logs TTA and plain accuracy.

    Runs ``trainer.predict`` on a ``TTAPredictor`` (any strategy, ddp_spawn too).
    """
    predictor = TTAPredictor(model, datamodule, settings)
    with tempfile.TemporaryDirectory() as tmp:
        gather = GatherPredictions(Path(tmp) / "tta.pt")
        trainer.callbacks.append(gather)
        try:
            trainer.predict(predictor)
        finally:
            trainer.callbacks.remove(gather)
        # With ddp_spawn the result was computed in other processes: read what their rank 0 saved.
        result = gather.result if gather.result is not None else torch.load(gather.path)
    probs, plain, targets = result["probs"], result["plain"], result["targets"]
    accuracy = {name: (p.argmax(1) == targets).float().mean().item() for name, p in (("tta", probs), ("plain", plain))}
    tta_acc, plain_acc = accuracy["tta"], accuracy["plain"]
    rank_zero_info(
        f"TTA ({settings.mode}) accuracy {tta_acc:.4f}, without TTA {plain_acc:.4f}, on {len(targets)} images"
    )
    return probs, targets
