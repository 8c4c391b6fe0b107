"""Inspection: what fastai's ``show_batch``, ``Recorder`` and ``ClassificationInterpretation`` show, in TensorBoard.

The HPARAMS tab (with a ``TensorBoardLogger``): at the end of the fit, ``hp_metric`` = the final ``val/acc``, written
with the module's and the data module's hyperparameters, so that TensorBoard compares runs by their final accuracy.
(Throughput, image and batch size: ``TrainScalars``, callbacks/scalars.py.)

Images (with a ``TensorBoardLogger``; rank 0 writes them):

- ``train/batch``: the augmented training batch, at the first batch and whenever the image size changes.
- ``train/mixup``: that batch as the module mixed it, each image captioned with its two labels and weights; when
  ``training_step`` returns a dict with ``"mixed": (x, y_a, y_b, lam)`` (ImagenetteClassifier with mixup or cutmix).
- ``val/confusion_matrix``: after each validation, rows actual, columns predicted (``MulticlassConfusionMatrix``,
  summed over the ranks).
- ``val/top_losses``: the validation images of highest cross entropy over all ranks: image, predicted and actual
  class, loss and the probability of the prediction.

What it reads, all public: batches ``(x, y)`` with ``x`` normalized images (B, 3, H, W); the logits (B, C) that
``validation_step`` returns; from the data module, where it has them, ``class_names`` and ``normalization`` (a
``data.normalization.Normalization``: its ``inverse`` undoes the normalization for pictures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from imagenette_sota.checks import check_numbers

TILE = 128  # px: side of every image tile, whatever the training or validation image size
LINE = 12  # px: height of a caption line
BLUE = (8, 48, 107)  # the confusion matrix's colour for a whole row in one cell (matplotlib's "Blues")
Rows = dict[str, Tensor]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(10)


def captioned(image: Tensor, lines: Sequence[str], side: int = TILE) -> Tensor:
    """A (3, H, W) image in [0, 1], resized to `side` px, with text lines below it -> float (3, H', side)."""
    canvas = Image.new("RGB", (side, side + LINE * len(lines) + 2), "white")
    canvas.paste(to_pil_image(image.detach().float().clamp(0, 1).cpu()).resize((side, side)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((2, side + 1 + i * LINE), line, fill="black", font=_font())
    return pil_to_tensor(canvas).float() / 255


def tile_grid(tiles: Sequence[Tensor]) -> Tensor:
    """Equal-sized (3, H, W) tiles as one about square grid image."""
    return make_grid(list(tiles), nrow=math.ceil(math.sqrt(len(tiles))), padding=2, pad_value=1.0)


def confusion_image(matrix: Tensor, names: Sequence[str], cell: int = 30) -> Tensor:
    """A confusion matrix (rows actual, columns predicted) drawn with its counts and class names -> float (3, H, W)."""
    font, counts, n = _font(), matrix.detach().cpu().long(), len(matrix)
    recall = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)  # a cell's colour: its share of the row
    margin = int(max(font.getlength(name) for name in names)) + 8
    top = margin + LINE + 4  # the axis title goes above the column names
    canvas = Image.new("RGB", (margin + n * cell + 4, top + n * cell + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        draw.text((margin - 4, top + i * cell + cell / 2), names[i], fill="black", font=font, anchor="rm")
        for j in range(n):
            v = recall[i, j].item()
            x0, y0 = margin + j * cell, top + i * cell
            fill = tuple(round(255 - v * (255 - c)) for c in BLUE)
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=(210, 210, 210))
            text_colour = "white" if v > 0.5 else "black"
            draw.text(
                (x0 + cell / 2, y0 + cell / 2), str(counts[i, j].item()), fill=text_colour, font=font, anchor="mm"
            )
    draw.text((2, 2), "rows: actual, columns: predicted", fill="black", font=font)
    # Column names read upwards: write them on a strip, then turn it into place above the columns.
    strip = Image.new("RGB", (margin, n * cell), "white")
    for j, name in enumerate(names):
        ImageDraw.Draw(strip).text((4, j * cell + cell / 2), name, fill="black", font=font, anchor="lm")
    canvas.paste(strip.rotate(90, expand=True), (margin, LINE + 4))
    return pil_to_tensor(canvas).float() / 255


def _cat(a: Rows, b: Rows) -> Rows:
    return {key: torch.cat([a[key], b[key]]) for key in a}


class Inspection(Callback):
    """Batch and mixup grids, confusion matrix, top losses, final hparams (see the module doc)."""

    def __init__(self, max_images: int = 16, top_losses: int = 9, confusion_matrix: bool = True) -> None:
        """Args:
        max_images: images in the training batch and mixup grids (0: no grids).
        top_losses: validation images of highest loss shown after each validation (0: none).
        confusion_matrix: draw the validation confusion matrix after each validation.
        """
        check_numbers(
            max_images=(max_images, ">= 0 (0: no grids)", max_images >= 0),
            top_losses=(top_losses, ">= 0 (0: none shown)", top_losses >= 0),
        )
        self.max_images, self.top_losses, self.confusion_matrix = max_images, top_losses, confusion_matrix
        self._shown_size: tuple[int, ...] | None = None  # the image size of the last batch grid
        self._show_batch = False  # whether this training batch is shown
        self._confusion: MulticlassConfusionMatrix | None = None
        self._worst: Rows | None = None

    # --- what the trainer and the data module know ------------------------------------------------------------------
    @staticmethod
    def denormalize(trainer: L.Trainer, x: Tensor) -> Tensor:
        """Normalized images -> images in [0, 1], with the data module's ``normalization`` (if it has one)."""
        normalization = getattr(trainer.datamodule, "normalization", None)
        return x.float().clamp(0, 1) if normalization is None else normalization.inverse(x)

    @staticmethod
    def namer(trainer: L.Trainer) -> Callable[[int], str]:
        """Label -> the data module's class name (the label's number where it has none)."""
        names = list(getattr(trainer.datamodule, "class_names", None) or [])
        return lambda label: names[label] if label < len(names) else str(label)

    @staticmethod
    def tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
        """The trainer's TensorBoard logger, if it has one."""
        return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)

    def _add_image(self, trainer: L.Trainer, tag: str, draw: Callable[[], Tensor]) -> None:
        """Draw and write an image (rank 0, with a TensorBoard logger)."""
        logger = self.tensorboard(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.add_image(tag, draw(), global_step=trainer.global_step)

    # --- training ---------------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Show the batch when its image size is new."""
        x, y = batch
        self._show_batch = self.max_images > 0 and tuple(x.shape[-2:]) != self._shown_size
        if self._show_batch:
            self._shown_size = tuple(x.shape[-2:])
            name, images, labels = self.namer(trainer), x[: self.max_images], y[: self.max_images].tolist()

            def draw() -> Tensor:
                tiles = zip(self.denormalize(trainer, images), labels, strict=True)
                return tile_grid([captioned(image, [name(label)]) for image, label in tiles])

            self._add_image(trainer, "train/batch", draw)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """When the batch was shown, show it as the module mixed it too."""
        mixed = outputs.get("mixed") if isinstance(outputs, dict) else None
        if self._show_batch and mixed is not None:
            x, y_a, y_b, lam = (t[: self.max_images] for t in mixed)
            name = self.namer(trainer)

            def draw() -> Tensor:
                tiles = zip(self.denormalize(trainer, x), y_a.tolist(), y_b.tolist(), lam.tolist(), strict=True)
                return tile_grid(
                    [captioned(i, [f"{w:.2f} {name(a)}", f"{1 - w:.2f} {name(b)}"]) for i, a, b, w in tiles]
                )

            self._add_image(trainer, "train/mixup", draw)

    # --- validation -------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start a new confusion matrix and a new list of top losses."""
        self._worst = None
        if self._confusion is not None:
            self._confusion.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count the batch into the confusion matrix; keep its worst predictions."""
        if trainer.sanity_checking or not (self.confusion_matrix or self.top_losses):
            return
        if not isinstance(outputs, Tensor) or outputs.ndim != 2:
            rank_zero_warn("Inspection needs validation_step to return the logits (B, C): no confusion matrix shown")
            return
        x, y = batch
        logits = outputs.detach().float()
        if self.confusion_matrix:
            if self._confusion is None:
                self._confusion = MulticlassConfusionMatrix(logits.shape[1]).to(logits.device)
            self._confusion.update(logits.argmax(1), y)
        if self.top_losses:
            probs = logits.softmax(1)
            rows = {
                "loss": F.cross_entropy(logits, y, reduction="none"),
                "image": x.detach(),
                "pred": probs.argmax(1),
                "prob": probs.amax(1),
                "target": y,
            }
            self._worst = self._keep_worst(rows if self._worst is None else _cat(self._worst, rows))

    def _keep_worst(self, rows: Rows) -> Rows:
        """The `top_losses` rows of highest loss, padded to exactly that many (loss -inf): equal on every rank."""
        missing = self.top_losses - len(rows["loss"])
        if missing > 0:
            pad = {key: value[:1].expand(missing, *value.shape[1:]) for key, value in rows.items()}
            pad["loss"] = torch.full((missing,), -math.inf, device=rows["loss"].device)
            rows = _cat(rows, pad)
        order = rows["loss"].topk(self.top_losses).indices
        return {key: value[order] for key, value in rows.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the confusion matrix and the top losses of all ranks."""
        if trainer.sanity_checking:
            return
        name = self.namer(trainer)
        if self._confusion is not None:
            matrix = self._confusion.compute()  # a collective: every rank has validated at least one batch
            names = [name(i) for i in range(len(matrix))]
            self._add_image(trainer, "val/confusion_matrix", lambda: confusion_image(matrix, names))
        if self._worst is not None:
            gathered = pl_module.all_gather(self._worst)
            if trainer.world_size > 1:  # (ranks, k, ...) -> (ranks * k, ...)
                gathered = {key: value.flatten(0, 1) for key, value in gathered.items()}
            worst = self._keep_worst(gathered)
            real = worst["loss"] > -math.inf
            worst = {key: value[real] for key, value in worst.items()}

            def draw() -> Tensor:
                rows = zip(
                    self.denormalize(trainer, worst["image"]),
                    *(worst[key].tolist() for key in ("pred", "target", "loss", "prob")),
                    strict=True,
                )
                return tile_grid(
                    [
                        captioned(image, [f"pred {name(p)}", f"true {name(t)}", f"loss {loss:.2f} p {prob:.2f}"])
                        for image, p, t, loss, prob in rows
                    ]
                )

            self._add_image(trainer, "val/top_losses", draw)

    # --- the end ----------------------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the hyperparameters with the final ``val/acc`` as ``hp_metric`` (TensorBoard's HPARAMS tab)."""
        logger, final = self.tensorboard(trainer), trainer.callback_metrics.get("val/acc")
        if logger is None or final is None:
            return
        params = dict(pl_module.hparams_initial)
        if trainer.datamodule is not None:
            params.update(trainer.datamodule.hparams_initial)
        logger.log_hyperparams(params, metrics={"hp_metric": float(final)})
