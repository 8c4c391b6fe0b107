"""The TTA predict loop: ``tta(trainer, model, datamodule, settings)`` predicts each sample exactly once, DDP too.

The views and their combination are ``imagenette_sota.tta``'s; this module runs them in ``trainer.predict`` and
gathers every rank's rows into one result in dataset order, on every rank.

    probs, targets = tta(trainer, model, datamodule)  # fastai's defaults: TTASettings(n=4, beta=0.25)
    probs, targets = tta(trainer, model, datamodule, TTASettings(mode="flip", beta=0.5))  # centre and mirror
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from imagenette_sota import seeds
from imagenette_sota.distributed import destroy_process_group_at_exit
from imagenette_sota.tta import TTASettings, tta_predict


class TTAPredictor(L.LightningModule):
    """``predict_step``: TTA and plain (centre-view) probabilities and the targets of one raw ``(x, y)`` batch.

    The data module is not given to ``trainer.predict``: its ``on_after_batch_transfer`` would turn every batch into
    the centre view first. The predictor asks it for the raw loader itself.
    """

    def __init__(self, model: nn.Module, data: L.LightningDataModule, settings: TTASettings = TTASettings()) -> None:
        """Args:
        model: maps normalized images to logits.
        data: provides predict_dataloader(), val_transform(x) and train_transform(x, generator); with
            tta_dataloader(n, seed) each augmented view also starts from its own presize crop, as in fastai's tta.
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
        return self.settings.crops > 0 and hasattr(self.data, "tta_dataloader")

    def predict_dataloader(self) -> Any:
        """The data module's raw predict batches; Lightning splits them across ranks without repeats or padding."""
        if self.redraws_crops:
            return self.data.tta_dataloader(self.settings.n, self.settings.seed)
        return self.data.predict_dataloader()

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """{"probs": TTA probabilities, "plain": centre-view probabilities, "targets": labels}.

        The augmentation draws from a host generator seeded by (seed, rank, batch): runs repeat and take nothing
        from the global RNG streams, but another number of ranks gives a sample other draws (the same in
        distribution; plain, flip and five-crop predictions match exactly).
        """
        x, y = batch
        generator = seeds.generator(seeds.derive(self.settings.seed, seeds.AUGMENT, self.global_rank, batch_idx))
        return tta_predict(self.model, self.data, self.settings, x, generator) | {"targets": y}


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

    Runs ``trainer.predict`` on a ``TTAPredictor`` (any strategy). Under ddp_spawn the ranks are other processes:
    the data module's state from a fit there (progressive sizes, batch statistics) stays in them, so restore it from
    the checkpoint or use strategy="ddp".
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
