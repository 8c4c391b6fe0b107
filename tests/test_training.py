"""End to end on real images: the DataModule feeding the LightningModule learns, and the CLI runs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from imagenette_sota import quiet
from imagenette_sota.cli import cli, main
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle

from .helpers import MINI_MD5


class _History(L.Callback):
    """Epoch means of the training loss and the validation accuracy."""

    def __init__(self) -> None:
        self.loss: list[float] = []
        self.acc: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.loss.append(trainer.callback_metrics["train/loss_epoch"].item())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.acc.append(trainer.callback_metrics["val/acc"].item())


def test_short_fit_on_real_images_learns(mini_root: Path) -> None:
    L.seed_everything(0)
    dm = ImagenetteDataModule(
        root=mini_root / "imagenette2-160-mini", presize=64, train_size=32, batch_size=20, num_workers=0
    )
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=(1, 1, 1, 1), widen=0.5), cycle=Cycle(1e-2))
    history = _History()
    trainer = quiet.trainer(accelerator="cpu", max_epochs=8, callbacks=[history])
    trainer.fit(model, dm)
    assert history.loss[-1] < 0.8 * history.loss[0]  # the training loss falls
    assert history.acc[-1] >= 0.25  # 10 classes: chance is 0.10 (100 validation images)


def test_cli_fit_with_the_quick_config(mini_archive: Path, tmp_path: Path) -> None:
    run = cli(
        [
            "fit",
            "--config",
            str(Path(__file__).parents[1] / "configs" / "cpu_quick.yaml"),
            "--data.root",
            str(tmp_path),
            "--data.url",
            str(mini_archive),
            "--data.md5",
            MINI_MD5,
            "--data.num_workers",
            "0",
            "--trainer.fast_dev_run",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert run.model.hparams.num_classes == run.datamodule.num_classes == 10  # linked, never typed twice
    assert run.trainer.global_step == 2 and (tmp_path / "imagenette2-160-mini" / "train").is_dir()
    assert torch.isfinite(run.trainer.callback_metrics["val/loss"])


def test_cli_rejects_an_unknown_key() -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model.no_such_key", "1"])
