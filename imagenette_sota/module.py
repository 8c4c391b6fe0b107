"""ImagenetteClassifier: what the network is asked to optimize (loss, mixup), how it is measured and trained."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from imagenette_sota import seeds
from imagenette_sota.backbone import Backbone, record
from imagenette_sota.checks import check_numbers
from imagenette_sota.distributed import destroy_process_group_at_exit
from imagenette_sota.hardware import BF16_FLAGS, cpu_bf16
from imagenette_sota.mixup import cutmix, mixed_loss, mixup
from imagenette_sota.models import xresnet50
from imagenette_sota.optim import WEIGHT_DECAY, OptimizerCallable, adam
from imagenette_sota.schedule import Cycle, one_cycle, param_groups

Batch = tuple[Tensor, Tensor]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model (another architecture or number of classes)."""


def check_checkpoint(
    model: nn.Module, checkpoint: Mapping[str, Any], source: str | None = None, strict: bool = True
) -> None:
    """Raise CheckpointMismatchError, naming ``source`` and each mismatch, if ``checkpoint`` does not fit ``model``.

    Shapes must agree for every weight both have; with ``strict`` the two must also hold the same weights.
    """
    saved, own = checkpoint["state_dict"], model.state_dict()
    problems = [
        f"{key}: {tuple(saved[key].shape)} in the checkpoint, {tuple(value.shape)} in the model"
        for key, value in own.items()
        if key in saved and saved[key].shape != value.shape
    ]
    if strict:
        for keys, where in ((own.keys() - saved.keys(), "missing from"), (saved.keys() - own.keys(), "extra in")):
            if keys:
                problems.append(f"{len(keys)} weight(s) {where} the checkpoint, e.g. {', '.join(sorted(keys)[:3])}")
    if not problems:
        return
    hparams = checkpoint.get("hyper_parameters", {})
    trained = f" (trained with num_classes={hparams['num_classes']})" if "num_classes" in hparams else ""
    name = f"checkpoint {source}" if source else "the checkpoint"
    raise CheckpointMismatchError(
        f"{name} does not fit this model{trained}:\n  "
        + "\n  ".join(problems)
        + "\nUse the backbone and the number of classes (the dataset) it was trained with, as its run's config.yaml "
        "records them, or train without ckpt_path."
    )


class ImagenetteClassifier(L.LightningModule):
    """An image classifier trained the fastai way: Adam or ranger, one-cycle or flat-cos, label smoothing, mixup."""

    def __init__(
        self,
        backbone: Backbone = xresnet50,
        num_classes: int = 10,
        cycle: Cycle = Cycle(3e-3),
        weight_decay: float = WEIGHT_DECAY,
        optimizer: OptimizerCallable = adam,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        """Args:
        backbone: builds the network from the number of classes (e.g. imagenette_sota.models.xresnet18).
        num_classes: outputs of the network (the CLI links it from the data module).
        cycle: the one-cycle over the fit (fastai's fit_one_cycle: peak lr_max, warm-up pct_start, from lr_max / div
            to lr_max / div_final); OneCycles starts later ones and times this one to its stages.
        weight_decay: decoupled weight decay on weights with ndim >= 2 (none on norms and biases).
        optimizer: builds the optimizer from the parameter groups (which carry the weight decay): fastai's Adam
            (imagenette_sota.optim.adam) or, e.g., imagenette_sota.optim.Ranger with its init_args. fastai's
            fit_flat_cos is a cycle with div 1 and moms null (schedule.flat_cos).
        label_smoothing: epsilon of label smoothing (0: the book's baseline, 0.1: fastai's default).
        mixup_alpha: Beta(alpha, alpha) of mixup in training (0: off; fastai uses 0.4).
        cutmix_alpha: Beta(alpha, alpha) of cutmix in training (0: off; fastai uses 1.0). Not with mixup.
        channels_last: NHWC memory format for model and inputs: faster than NCHW on the CPU and the layout of
            tensor cores under AMP (benchmarks/fast_paths/ compares them).
        compile: torch.compile the backbone: for GPUs; slower on the CPU even after compiling, and each new
            image size compiles again (benchmarks/fast_paths/).
        """
        super().__init__()
        check_numbers(
            weight_decay=(weight_decay, ">= 0", weight_decay >= 0),
            label_smoothing=(label_smoothing, "in [0, 1)", 0 <= label_smoothing < 1),
            mixup_alpha=(mixup_alpha, ">= 0", mixup_alpha >= 0),
            cutmix_alpha=(cutmix_alpha, ">= 0", cutmix_alpha >= 0),
        )
        if mixup_alpha > 0 and cutmix_alpha > 0:
            raise ValueError(
                f"mixup_alpha={mixup_alpha!r} and cutmix_alpha={cutmix_alpha!r}: choose mixup or cutmix, not both "
                "(set one of them to 0)"
            )
        self.cycle = Cycle(**cycle) if isinstance(cycle, Mapping) else cycle  # a dict: from a checkpoint's hparams
        # A function is not a hyperparameter one can store sensibly; the CLI's config.yaml records it. The cycle is
        # recorded as a dict (save_hyperparameters reads the arguments' current values): checkpoints load with
        # weights_only=True, which unpickles no classes of ours.
        cycle = asdict(self.cycle)
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        # How to build the network again, recorded in checkpoints for inference (imagenette_sota.trained); the CLI
        # sets its config's spelling, which also covers a class with init_args.
        self.backbone_record = record(backbone)
        self.make_optimizer = optimizer
        self.model = backbone(num_classes)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()  # in place: state_dict keys stay the same as without compile
        top5 = min(5, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        # A metric, not a logged mean: under DDP Lightning averages logged means with an integer sample count
        # (99 images on 2 ranks: divided by 2 x 49), while a metric sums losses and counts exactly.
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of normalized images (B, 3, H, W)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Cross entropy with label smoothing, on mixed images and targets when mixup or cutmix is on.

        Returns ``{"loss": ...}``, with ``"mixed": (x, y_a, y_b, lam)`` when mixing (for callbacks such as Inspection).
        """
        hp = self.hparams
        x, y = batch
        per_sample = partial(F.cross_entropy, reduction="none", label_smoothing=hp.label_smoothing)
        out: dict[str, Any] = {}
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            mix, alpha = (mixup, hp.mixup_alpha) if hp.mixup_alpha > 0 else (cutmix, hp.cutmix_alpha)
            x, y_a, y_b, lam = out["mixed"] = mix(x, y, alpha, generator=self._mix_generator(batch_idx, x.device))
            out["loss"] = mixed_loss(per_sample, self(x), y_a, y_b, lam)
        else:
            out["loss"] = per_sample(self(x), y).mean()
        self.log("train/loss", out["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return out

    def _mix_generator(self, batch_idx: int, device: torch.device) -> torch.Generator | None:
        """Seeded from (run seed, rank, epoch, batch index) in a fit; None (the global stream) outside one."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer
            return None
        parts = (seeds.run_seed(), seeds.MIX, trainer.global_rank, trainer.current_epoch, batch_idx)
        return seeds.generator(seeds.derive(*parts), device)

    def setup(self, stage: str) -> None:
        """Under DDP, have this process's group destroyed at exit (``distributed.destroy_process_group_at_exit``)."""
        destroy_process_group_at_exit()

    def on_fit_start(self) -> None:
        """Warn when bf16 would run emulated (several times slower than fp32), or when no checkpoint of this fit will
        say how to build its network (a lambda or a local function as the backbone)."""
        if self.backbone_record is None:
            rank_zero_warn(
                f"backbone {type(self.model).__name__} comes from a function that cannot be written down (a lambda or "
                "a local function?): checkpoints will hold the weights, but classify, export and serve cannot rebuild "
                "the network. Pass an importable function or class, or functools.partial of one."
            )
        if self.device.type == "cpu" and "bf16" in str(self.trainer.precision) and cpu_bf16() is False:
            rank_zero_warn(
                f"precision {self.trainer.precision!r} on a CPU without bf16 units ({' or '.join(BF16_FLAGS)} in "
                "/proc/cpuinfo): bf16 is emulated and several times slower than fp32 here. Pass "
                "--trainer.precision 32-true (or precision='32-true' to the Trainer)."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to build the backbone beside the weights: inference rebuilds the network from it."""
        checkpoint["backbone"] = self.backbone_record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture or number of classes with a clear message, before loading."""
        try:
            source = self.trainer.ckpt_path
        except RuntimeError:  # not attached to a Trainer (load_from_checkpoint)
            source = None
        check_checkpoint(self, checkpoint, None if source is None else str(source), strict=self.strict_loading)

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Loss and accuracy against the hard labels; returns the logits (for callbacks such as Inspection)."""
        return self._evaluate(batch, "val", self.val_loss, self.val_acc, self.val_acc_top5)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Loss and accuracy against the hard labels."""
        self._evaluate(batch, "test", self.test_loss, self.test_acc, self.test_acc_top5)

    def _evaluate(
        self, batch: Batch, stage: str, loss: MeanMetric, acc: MulticlassAccuracy, acc_top5: MulticlassAccuracy
    ) -> Tensor:
        """Log `stage`/loss, /acc and /acc_top5: means over every image of every rank; return the logits."""
        x, y = batch
        logits = self(x)
        loss(F.cross_entropy(logits, y, reduction="none", label_smoothing=self.hparams.label_smoothing))
        acc(logits, y)
        acc_top5(logits, y)
        log = partial(self.log, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
        log(f"{stage}/loss", loss, prog_bar=True)
        log(f"{stage}/acc", acc, prog_bar=True)
        log(f"{stage}/acc_top5", acc_top5)
        return logits

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities (B, num_classes)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=1)

    @property
    def lr(self) -> float:
        """The cycle's peak learning rate; setting it (LRFinder does) changes the cycle and its hyperparameter."""
        return self.cycle.lr_max

    @lr.setter
    def lr(self, value: float) -> None:
        self.cycle = replace(self.cycle, lr_max=value)
        self.hparams["cycle"] = asdict(self.cycle)

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer (weight decay on weights, none on norms and biases) and one cycle over the fit, per batch.

        OneCycles re-times it to its stages.
        """
        optimizer = self.make_optimizer(param_groups(self.model, self.hparams.weight_decay))
        scheduler = one_cycle(optimizer, self.cycle, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
