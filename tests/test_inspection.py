"""Inspection in TensorBoard: a short real fit, read back from its event file; the drawings on their own."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from imagenette_sota import quiet
from imagenette_sota.callbacks import ProgressiveResize, Stage, TrainScalars
from imagenette_sota.callbacks.inspection import BLUE, LINE, TILE, Inspection, confusion_image
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier

from .test_ddp import DDP, TIMEOUT, deadline

EPOCHS, BATCHES, VAL_BATCHES = 2, 2, 2


@pytest.fixture(scope="module")
def events(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EventAccumulator, L.Trainer]:
    """A 2-epoch fit with mixup whose image size grows from 32 to 48 px, read back from its event file."""
    torch.set_num_threads(1)
    L.seed_everything(0)
    dm = ImagenetteDataModule(root=mini_dir, presize=64, batch_size=8, num_workers=0)
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=(1, 1, 1, 1), widen=0.25), mixup_alpha=0.4)
    logger = TensorBoardLogger(tmp_path_factory.mktemp("tb"), name="", version=0)
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=VAL_BATCHES,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[
            ProgressiveResize({0: Stage(32), 1: Stage(48)}),
            TrainScalars(),
            LearningRateMonitor(logging_interval="step", log_momentum=True),
            Inspection(max_images=4, top_losses=5),
        ],
    )
    trainer.fit(model, dm)
    (path,) = Path(logger.log_dir).glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    return accumulator.Reload(), trainer


def test_scalars_per_step_and_per_epoch(events: tuple[EventAccumulator, L.Trainer]) -> None:
    accumulator, _ = events
    steps = EPOCHS * BATCHES
    for tag in ("lr-AdamW/pg1", "lr-AdamW/pg2", "lr-AdamW/pg1-momentum", "train/loss_step"):
        assert [e.step for e in accumulator.Scalars(tag)] == list(range(steps)), tag
    lrs = [e.value for e in accumulator.Scalars("lr-AdamW/pg1")]
    assert lrs[0] < max(lrs)  # the one-cycle warms up
    for tag in ("train/images_per_sec", "train/loss_epoch", "val/loss", "val/acc", "val/acc_top5"):
        assert len(accumulator.Scalars(tag)) == EPOCHS, tag
    assert all(e.value > 0 for e in accumulator.Scalars("train/images_per_sec"))
    assert [e.value for e in accumulator.Scalars("train/image_size")] == [32.0, 48.0]  # once an epoch
    assert [e.value for e in accumulator.Scalars("train/batch_size")] == [8.0, 8.0]


def test_hparams_carry_the_final_accuracy(events: tuple[EventAccumulator, L.Trainer]) -> None:
    accumulator, trainer = events
    assert accumulator.Scalars("hp_metric")[-1].value == pytest.approx(trainer.callback_metrics["val/acc"].item())
    start = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["mixup_alpha"].number_value == pytest.approx(0.4) and "num_classes" in hparams


def grid_side(n: int, tile_height: int) -> tuple[int, int]:
    """(width, height) of make_grid's about square grid of n tiles of TILE x tile_height px, padding 2."""
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    return columns * (TILE + 2) + 2, rows * (tile_height + 2) + 2


def test_batch_grids_at_each_new_size_and_the_mixup_grid(events: tuple[EventAccumulator, L.Trainer]) -> None:
    accumulator, _ = events
    batches = accumulator.Images("train/batch")
    assert [e.step for e in batches] == [0, BATCHES]  # the first batch, and the first batch at 48 px
    assert all((e.width, e.height) == grid_side(4, TILE + LINE + 2) for e in batches)
    mixups = accumulator.Images("train/mixup")
    assert [e.step for e in mixups] == [1, BATCHES + 1]  # after the mixed step
    assert all((e.width, e.height) == grid_side(4, TILE + 2 * LINE + 2) for e in mixups)


def test_confusion_matrix_and_top_losses_after_each_validation(events: tuple[EventAccumulator, L.Trainer]) -> None:
    accumulator, _ = events
    validations = [BATCHES * (epoch + 1) for epoch in range(EPOCHS)]  # none from the sanity check
    assert [e.step for e in accumulator.Images("val/confusion_matrix")] == validations
    top = accumulator.Images("val/top_losses")
    assert [e.step for e in top] == validations
    assert all((e.width, e.height) == grid_side(5, TILE + 3 * LINE + 2) for e in top)


def test_confusion_image_colours_each_cell_by_its_share_of_the_row() -> None:
    matrix = torch.tensor([[3, 0], [1, 1]])
    image = confusion_image(matrix, ["a", "b"], cell=30)
    assert image.shape[0] == 3
    width = image.shape[2]
    left, top = width - 4 - 2 * 30, image.shape[1] - 4 - 2 * 30  # the cells sit in the bottom-right corner
    pixel = (image[:, top + 3, left + 3] * 255).round().tolist()  # a corner of cell (0, 0): the whole row
    assert pixel == list(BLUE)
    empty = (image[:, top + 3, left + 30 + 3] * 255).round().tolist()  # cell (0, 1): none of the row
    assert empty == [255, 255, 255]


def test_keeps_the_worst_rows_padded_to_the_same_count() -> None:
    worst = Inspection(top_losses=3)._keep_worst(
        {"loss": torch.tensor([0.5, 4.0]), "image": torch.zeros(2, 3, 4, 4), "target": torch.tensor([1, 2])}
    )
    assert worst["loss"].tolist() == [4.0, 0.5, -math.inf] and worst["target"].tolist()[:2] == [2, 1]
    assert worst["image"].shape == (3, 3, 4, 4)


def test_under_ddp_the_top_losses_come_from_every_rank(mini_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    # One validation batch of 3 images per rank: 6 rows in all, of which the top 5 are drawn.
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, batch_size=8, val_batch_size=3, num_workers=0)
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=(1, 1, 1, 1), widen=0.25))
    logger = TensorBoardLogger(tmp_path, name="", version=0)
    trainer = quiet.trainer(
        **{**DDP, "strategy": "ddp_fork", "logger": logger},
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[Inspection(max_images=2, top_losses=5)],
    )
    with deadline(TIMEOUT):
        trainer.fit(model, dm)
    (path,) = tmp_path.glob("version_0/events.out.tfevents.*")
    accumulator = EventAccumulator(str(path), size_guidance={"images": 0}).Reload()
    (top,) = accumulator.Images("val/top_losses")
    assert (top.width, top.height) == grid_side(5, TILE + 3 * LINE + 2)  # rank 0 alone holds 3
    assert len(accumulator.Images("val/confusion_matrix")) == 1
