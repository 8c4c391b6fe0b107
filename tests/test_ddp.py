"""Two processes on the CPU (ddp_spawn, gloo) on 99 validation images, which 2 ranks cannot split evenly.

A fit's validation accuracy equals a one-process recomputation, and TTA predicts every image exactly once.
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from imagenette_sota.callbacks import ProgressiveResize, Stage, tta
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier

QUIET = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
DDP = {**QUIET, "devices": 2, "strategy": "ddp_spawn"}
TIMEOUT = 240  # s per DDP run: far above the ~15 s one takes on 2 cores, so only a hang reaches it
tiny_xresnet = partial(XResNet, layers=(1, 1, 1, 1), widen=0.5)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging, when the block takes over `seconds`; stop the processes the block started."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"a DDP run took over {seconds} s: a rank is probably waiting for the other")

    before = set(multiprocessing.active_children())
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for child in set(multiprocessing.active_children()) - before:
            child.terminate()
            child.join()


@pytest.fixture(scope="module")
def odd_dir(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini dataset without its first validation image: 200 train and 99 val images."""
    root = tmp_path_factory.mktemp("odd") / "imagenette2-160-mini"
    shutil.copytree(mini_dir, root)
    min(p for p in (root / "val").rglob("*.JPEG")).unlink()
    return root


def imagenette(root: Path) -> ImagenetteDataModule:
    return ImagenetteDataModule(root=root, presize=64, train_size=32, batch_size=16, num_workers=0)


def test_validation_sampler_splits_without_repeats(odd_dir: Path) -> None:
    dm = imagenette(odd_dir)
    dm.setup("validate")
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shares.append(list(dm.val_dataloader().sampler))
    assert sorted(shares[0] + shares[1]) == list(range(99)) and [len(s) for s in shares] == [50, 49]


class FinalLR(Callback):
    """Logs the lr after the last optimizer step (callback metrics come back from spawned processes)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("final_lr", trainer.optimizers[0].param_groups[0]["lr"], sync_dist=True)


def test_ddp_fit_validation_accuracy_is_exact(odd_dir: Path) -> None:
    torch.manual_seed(0)
    model = ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10, lr=1e-2)
    dm = imagenette(odd_dir)
    trainer = L.Trainer(
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        callbacks=[ProgressiveResize({0: Stage(32, 16)}), FinalLR()],
        **DDP,
    )
    with deadline(TIMEOUT):
        trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    # Each rank trains on its 100 of the 200 images: 6 steps of 16 (global batch 32), the whole cycle.
    assert metrics["final_lr"].item() == pytest.approx(model.cycle.lr_max / model.cycle.div_final)
    assert metrics["train/image_size"].item() == 32 and metrics["train/batch_size"].item() == 16
    ddp_acc = metrics["val/acc"].item()
    assert ddp_acc * 99 == pytest.approx(round(ddp_acc * 99), abs=1e-4)  # counted over 99 images, not 100
    one = L.Trainer(devices=1, **QUIET).validate(model, datamodule=dm, verbose=False)[0]
    assert one["val/acc"] == pytest.approx(ddp_acc, abs=1e-6)


def test_tta_under_ddp_predicts_each_image_once(odd_dir: Path) -> None:
    torch.manual_seed(0)
    model = tiny_xresnet(10).eval()
    dm, one = imagenette(odd_dir), L.Trainer(devices=1, **QUIET)
    centre = tta(one, model, dm, n=0)[0]
    # The centre view has no randomness: equal row by row, i.e. the same images in the same order. (ddp_fork is
    # ddp_spawn without re-importing Lightning in each process: 1 s instead of 25 here.)
    with deadline(TIMEOUT):
        ddp_centre, targets = tta(L.Trainer(**{**DDP, "strategy": "ddp_fork"}), model, dm, n=0)
    assert ddp_centre.shape == (99, 10) and torch.equal(targets, torch.tensor(dm.val_set.targets))
    torch.testing.assert_close(ddp_centre, centre)
    with deadline(TIMEOUT):
        augmented = tta(L.Trainer(**DDP), model, dm, n=8)[0]
    seed0, seed1 = (tta(one, model, dm, n=8, seed=s)[0] for s in (0, 1))
    # Other ranks draw other augmentations: DDP differs from one process about as much as another seed does,
    # and moves each prediction away from the centre view the same way (cosine about 0.8, like two seeds).
    assert (augmented - seed0).abs().mean() < 2 * (seed0 - seed1).abs().mean()
    moved = F.cosine_similarity((augmented - centre).flatten(), (seed0 - centre).flatten(), dim=0)
    assert moved > 0.5
