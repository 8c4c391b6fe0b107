"""EMA of the weights with Lightning's own ``EMAWeightAveraging``: what it averages, under progressive resizing,
that validation, the final weights and end-of-fit TTA use the average, and the CLI's ``final_tta``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from imagenette_sota import quiet
from imagenette_sota.callbacks import OneCycles, ProgressiveResize, Stage, ValidationPredictions, tta
from imagenette_sota.cli import cli
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle
from imagenette_sota.tta import TTASettings

DECAY = 0.9
TINY = {"layers": [1, 1, 1, 1], "widen": 0.25}


class Weights(Callback):
    """The model's parameters after every optimizer step (before any averaging callback could swap them)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def test_ema_under_progressive_resizing_is_what_validation_tta_and_the_final_weights_use(
    mini_dir: Path, one_thread: None
) -> None:
    L.seed_everything(0)
    dm = ImagenetteDataModule(
        root=mini_dir, presize=48, train_size=32, val_size=40, batch_size=16, num_workers=0, cache=False
    )
    model = ImagenetteClassifier(backbone=partial(XResNet, **TINY), num_classes=10, cycle=Cycle(1e-2))
    weights = Weights()
    resize = ProgressiveResize({0: Stage(24, 32), 1: Stage(32, 16)})
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=3,
        callbacks=[weights, resize, OneCycles(), EMAWeightAveraging(decay=DECAY)],
    )
    trainer.fit(model, dm)
    assert len(weights.steps) == 6 and dm.batch_size == 16  # both stages ran, loaders rebuilt
    # AveragedModel's EMA: the first update copies, then ema = decay * ema + (1 - decay) * weights.
    expected = dict(weights.steps[0])
    for step in weights.steps[1:]:
        expected = {n: DECAY * e + (1 - DECAY) * step[n] for n, e in expected.items()}
    final = dict(model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(final[name], weights.steps[-1][name]) or name.endswith("bias"), name
    # The last validation ran on the average, which the model now holds: validating again gives the same.
    fit_acc = trainer.callback_metrics["val/acc"].item()
    assert trainer.validate(model, dm, verbose=False)[0]["val/acc"] == pytest.approx(fit_acc, abs=1e-7)
    # End-of-fit TTA runs on these weights: its centre view alone (beta 1) is that validation.
    probs, targets = tta(trainer, model, dm, TTASettings(mode="flip", beta=1.0))
    assert (probs.argmax(1) == targets).float().mean().item() == pytest.approx(fit_acc, abs=1e-7)


def test_cli_fit_with_ema_from_yaml_and_final_flip_tta(mini_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = {
        "trainer": {
            **quiet.SETTINGS,
            "max_epochs": 1,
            "limit_train_batches": 2,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.99}}
            ],
        },
        "model": {"backbone": {"class_path": "imagenette_sota.models.XResNet", "init_args": TINY}},
        "data": {"root": str(mini_dir), "presize": 40, "train_size": 32, "batch_size": 16, "num_workers": 0},
        "final_tta": {"mode": "flip"},
    }
    path = tmp_path / "ema.yaml"
    path.write_text(yaml.safe_dump(config))
    run = cli(["fit", "--config", str(path)])
    assert any(isinstance(c, EMAWeightAveraging) for c in run.trainer.callbacks)
    assert set(run.final_tta) == {"acc", "s", "end"} and run.final_tta["s"] > 0
    # Its centre view was the last validation's, run on the average (swapped in for it) that the fit ended with ...
    recorded = next(c for c in run.trainer.callbacks if isinstance(c, ValidationPredictions))
    assert recorded.centre_for(run.model, run.datamodule) is not None
    # ... so it scores as the configured mode on those weights does when it predicts every view: flip TTA's score.
    probs, targets = tta(run.trainer, run.model, run.datamodule, TTASettings(mode="flip"))
    assert run.final_tta["acc"] == pytest.approx((probs.argmax(1) == targets).float().mean().item(), abs=1e-7)
