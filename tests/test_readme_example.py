"""The README's reuse example, run as written: the suite's pieces inside someone else's LightningModule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Pasted into README.md verbatim: keep the two in step.
EXAMPLE = """\
import lightning as L
import torch

from imagenette_sota.callbacks import Inspection, ProgressiveResize, Stage, TrainScalars
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.augment import Augment
from imagenette_sota.mixup import mixed_loss, mixup
from imagenette_sota.models import xresnet18


class MyClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = xresnet18(n_out=10)

    def training_step(self, batch, batch_idx):
        x, y_a, y_b, lam = mixup(*batch, alpha=0.4)
        return mixed_loss(torch.nn.CrossEntropyLoss(reduction="none"), self.net(x), y_a, y_b, lam)

    def validation_step(self, batch, batch_idx):
        return self.net(batch[0])  # logits: Inspection draws the confusion matrix and the top losses

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


data = ImagenetteDataModule("imagenette2-160", presize=80, batch_size=32, augment=Augment(min_scale=0.35))
resize = ProgressiveResize({0: Stage(48), 1: Stage(64)})
trainer = L.Trainer(max_epochs=2, callbacks=[resize, TrainScalars(), Inspection()])
trainer.fit(MyClassifier(), data)
"""


def test_readme_example_runs(mini_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(EXAMPLE.splitlines()) <= 30
    torch.set_num_threads(1)
    # Where the example's data module looks: 4 training images per class (one batch of 32) and 2 to validate.
    for split, count in (("train", 4), ("val", 2)):
        for folder in sorted((mini_dir / split).iterdir()):
            target = tmp_path / "data" / "imagenette2-160" / split / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                os.symlink(image, target / image.name)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(EXAMPLE, "<README example>", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.current_epoch == 2 and torch.isfinite(trainer.callback_metrics["train/images_per_sec"])
    (events,) = tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.value for e in accumulator.Scalars("train/image_size")] == [48.0, 64.0]
    assert len(accumulator.Images("val/confusion_matrix")) == len(accumulator.Images("val/top_losses")) == 2
