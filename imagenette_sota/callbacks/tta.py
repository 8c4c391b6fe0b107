"""The TTA predict loop: ``tta(trainer, model, datamodule, settings)`` predicts each sample exactly once, DDP too.

The views and their combination are ``imagenette_sota.tta``'s; this module runs them in ``trainer.predict`` and
gathers every rank's rows into one result in dataset order, on every rank.

    probs, targets = tta(trainer, model, datamodule)  # fastai's defaults: TTASettings(n=4, beta=0.25)
    probs, targets = tta(trainer, model, datamodule, TTASettings(mode="flip", beta=0.5))  # centre and mirror

After a fit, the centre view need not be predicted again: ``ValidationPredictions`` among the fit's callbacks keeps
what its last validation predicted, and ``tta(..., centre=recorder.centre_for(model, datamodule))`` predicts only the
other views (the CLI's ``final_tta`` does: a flip TTA then costs one validation pass, not two).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from imagenette_sota import seeds
from imagenette_sota.distributed import destroy_process_group_at_exit
from imagenette_sota.tta import TTASettings, combine, tta_predict, tta_views


class TTAPredictor(L.LightningModule):
    """``predict_step``: TTA and plain (centre-view) probabilities and the targets of one raw ``(x, y)`` batch.

    The data module is not given to ``trainer.predict``: its ``on_after_batch_transfer`` would turn every batch into
    the centre view first. The predictor asks it for the raw loader itself.
    """

    def __init__(
        self,
        model: nn.Module,
        data: L.LightningDataModule,
        settings: TTASettings = TTASettings(),
        views_only: bool = False,
    ) -> None:
        """Args:
        model: maps normalized images to logits.
        data: provides predict_dataloader(), val_transform(x) and train_transform(x, generator); with
            tta_dataloader(n, seed) each augmented view also starts from its own presize crop, as in fastai's tta.
        settings: the views and how they combine.
        views_only: predict the views other than the centre one only (the caller has the centre's).
        """
        super().__init__()
        self.model, self.data, self.settings, self.views_only = model, data, settings, views_only

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
        """{"probs": TTA probabilities, "plain": centre-view probabilities, "targets": labels}; with ``views_only``
        {"views": the other views' probabilities (B, views, C), "targets": labels}.

        The augmentation draws from a host generator seeded by (seed, rank, batch): runs repeat and take nothing
        from the global RNG streams, but another number of ranks gives a sample other draws (the same in
        distribution; plain, flip and five-crop predictions match exactly).
        """
        x, y = batch
        generator = seeds.generator(seeds.derive(self.settings.seed, seeds.AUGMENT, self.global_rank, batch_idx))
        if self.views_only:
            views = [self.model(v).float().softmax(1) for v in tta_views(self.data, self.settings, x, generator)]
            return {"views": torch.stack(views, 1), "targets": y}
        return tta_predict(self.model, self.data, self.settings, x, generator) | {"targets": y}


def gather_in_order(strategy: Strategy, size: int, indices: Tensor, values: Tensor) -> Tensor:
    """Rows `values` of dataset rows `indices` from every rank, as one (size, ...) tensor on every rank."""
    full = values.new_zeros((size, *values.shape[1:]))
    full[indices] = values
    return strategy.reduce(full, reduce_op="sum")  # each row is nonzero on one rank only: the sum is exact


def fingerprint(model: nn.Module) -> list[float]:
    """The sums of each floating-point tensor of ``model``'s state (weights and buffers): equal for equal states."""
    return [t.detach().double().sum().item() for t in model.state_dict().values() if t.is_floating_point()]


class ValidationPredictions(Callback):
    """Keeps the centre-view probabilities of a fit's last validation, in dataset order on every rank, for a TTA
    after the fit to take as its centre view instead of predicting it again (``centre_for``).

    Recorded from what ``validation_step`` returns per batch (logits (B, C), as ``ImagenetteClassifier``'s), with the
    dataset rows of each batch from the validation loader's ``batch_sampler``. Nothing is kept when a validation step
    returns something else, or when a validation did not see every image once or more (``limit_val_batches``).
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self._rows: list[tuple[int, Tensor, Tensor]] | None = []
        self._state: dict[str, Any] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A new validation: what the one before predicted no longer describes the weights."""
        self.result, self._rows, self._state = None, [], {}

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        """Keep the batch's probabilities and targets; at the first batch, what the predictions depend on."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._rows is None:
            return
        if not isinstance(outputs, Tensor) or outputs.ndim != 2:
            self._rows = None
            return
        if not self._rows:  # the weights as validated (an EMA's average is swapped in for the whole validation)
            self._state = {"model": fingerprint(pl_module), "val_size": getattr(trainer.datamodule, "val_size", None)}
        self._rows.append((batch_idx, outputs.detach().float().softmax(1), batch[1].detach()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather every rank's rows in dataset order (collectives: every rank calls them, and decides alike)."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        loader, device, rows = trainer.val_dataloaders, pl_module.device, self._rows or []
        batches = getattr(loader, "batch_sampler", None)  # iterated again: the batches the validation drew (in order)
        usable = self._rows is not None and batches is not None and hasattr(loader, "dataset")
        self.result, self._rows = None, []
        if trainer.strategy.reduce(torch.tensor(float(not usable), device=device), reduce_op="sum").item() > 0:
            return
        size, order = len(loader.dataset), list(batches)
        indices = torch.tensor([i for batch_idx, *_ in rows for i in order[batch_idx]], dtype=torch.long, device=device)
        counts = trainer.strategy.reduce(indices.bincount(minlength=size).double(), reduce_op="sum")
        if not bool((counts >= 1).all()):
            return
        width = torch.tensor(max((p.shape[1] for _, p, _ in rows), default=0), device=device)  # a rank may have none
        classes = int(trainer.strategy.reduce(width, reduce_op="max").item())
        probs = torch.cat([p for _, p, _ in rows]).double() if rows else torch.zeros(0, classes, dtype=torch.double)
        labels = torch.cat([t for *_, t in rows]).double() if rows else torch.zeros(0, dtype=torch.double)
        # A row validated on two ranks (a repeating sampler) is the same image: its copies are averaged.
        plain = torch.zeros(size, classes, dtype=torch.double, device=device).index_add_(0, indices, probs.to(device))
        targets = torch.zeros(size, dtype=torch.double, device=device).index_add_(0, indices, labels.to(device))
        plain = trainer.strategy.reduce(plain, reduce_op="sum") / counts[:, None]
        targets = trainer.strategy.reduce(targets, reduce_op="sum") / counts
        self.result = {"plain": plain.float().cpu(), "targets": targets.round().long().cpu()}

    def centre_for(self, model: nn.Module, datamodule: Any) -> dict[str, Tensor] | None:
        """{"plain", "targets"} of the last validation when ``model`` is in the state it was validated in and the
        data module validates at the same size; else None (predict the centre view again)."""
        if self.result is None or fingerprint(model) != self._state.get("model"):
            return None
        if getattr(datamodule, "val_size", None) != self._state.get("val_size"):
            return None
        return {"plain": self.result["plain"], "targets": self.result["targets"]}


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
    trainer: L.Trainer,
    model: nn.Module,
    datamodule: L.LightningDataModule,
    settings: TTASettings = TTASettings(),
    centre: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """TTA probabilities (N, C) and targets (N,) of the predict set in dataset order; logs TTA and plain accuracy.

    Runs ``trainer.predict`` on a ``TTAPredictor`` (any strategy). Under ddp_spawn the ranks are other processes:
    the data module's state from a fit there (progressive sizes, batch statistics) stays in them, so restore it from
    the checkpoint or use strategy="ddp".

    centre: {"plain": centre-view probabilities (N, C), "targets": (N,)} of these weights on the predict set, in
    dataset order (``ValidationPredictions.centre_for``): only the other views are predicted.
    """
    views_only = centre is not None and settings.passes > 1
    predictor = TTAPredictor(model, datamodule, settings, views_only=views_only)
    with tempfile.TemporaryDirectory() as tmp:
        gather = GatherPredictions(Path(tmp) / "tta.pt")
        trainer.callbacks.append(gather)
        try:
            trainer.predict(predictor)
        finally:
            trainer.callbacks.remove(gather)
        # With ddp_spawn the result was computed in other processes: read what their rank 0 saved.
        result = gather.result if gather.result is not None else torch.load(gather.path)
    if views_only:
        if not torch.equal(result["targets"], centre["targets"]):
            raise ValueError("centre: its targets are not the predict set's in dataset order (another data split?)")
        plain = centre["plain"]
        result |= {"plain": plain, "probs": combine(plain, result["views"].unbind(1), settings.beta, settings.use_max)}
    probs, plain, targets = result["probs"], result["plain"], result["targets"]
    accuracy = {name: (p.argmax(1) == targets).float().mean().item() for name, p in (("tta", probs), ("plain", plain))}
    tta_acc, plain_acc = accuracy["tta"], accuracy["plain"]
    rank_zero_info(
        f"TTA ({settings.mode}) accuracy {tta_acc:.4f}, without TTA {plain_acc:.4f}, on {len(targets)} images"
    )
    return probs, targets
