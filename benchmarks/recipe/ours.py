"""Our side: the recipe's YAML through ``ImagenetteCLI`` at the reduced scale, on the CPU in fp32, seeded."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks.recipe.diagnostics import shared_crop
from benchmarks.recipe.scale import side
from imagenette_sota import quiet

# Overridden besides the scale and the data: a quiet trainer, one CPU process in fp32, no inspection images.
CPU_FP32 = [
    *quiet.CLI_ARGS,
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--inspection.max_images=0",
    "--inspection.top_losses=0",
    "--inspection.confusion_matrix=false",
    "--data.num_workers=0",
]


class EpochLog(L.Callback):
    """Per epoch: validation accuracy and the mean training loss; stops the fit after ``stop`` epochs if given."""

    def __init__(self, stop: int | None = None) -> None:
        self.acc: list[float] = []
        self.loss: list[float] = []
        self.stop = stop

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.loss.append(trainer.callback_metrics["train/loss_epoch"].item())
        if self.stop is not None and len(self.loss) >= self.stop:
            trainer.should_stop = True  # the schedule stays the whole recipe's: its first epochs only

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.acc.append(trainer.callback_metrics["val/acc"].item())


def ours(
    configs: list[str],
    config: dict[str, Any],
    data: Path,
    epochs: int | None,
    scale: float,
    seed: int,
    stop: int | None = None,
    crop: str = "sample",
) -> dict:
    """Fit the recipe (``configs``: its --config arguments) with this suite at the reduced scale, seeded with
    ``seed``; per-epoch accuracy and training loss. ``crop="batch"`` fits inside ``shared_crop``."""
    from imagenette_sota.cli import ImagenetteCLI, ImagenetteTrainer
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.module import ImagenetteClassifier

    d = config["data"]
    sizes = [
        f"--data.presize={side(d['presize'], scale)}",
        f"--data.train_size={side(d['train_size'], scale)}",
        f"--data.val_size={side(d['val_size'], scale) if d.get('val_size') else 'null'}",
    ]
    cli_args = list(configs)
    cli_args += [*CPU_FP32, f"--data.root={data}", "--data.cache=true", f"--seed_everything={seed}", *sizes]
    cli_args += [f"--trainer.max_epochs={epochs}"] if epochs else []
    run = ImagenetteCLI(
        ImagenetteClassifier,
        ImagenetteDataModule,
        trainer_class=ImagenetteTrainer,
        args=cli_args,
        save_config_callback=None,
        run=False,
    )
    log = EpochLog(stop)
    run.trainer.callbacks.append(log)
    start = time.perf_counter()
    with shared_crop() if crop == "batch" else contextlib.nullcontext():
        run.trainer.fit(run.model, run.datamodule)
    return {"acc": log.acc, "loss": log.loss, "steps": run.trainer.global_step, "s": time.perf_counter() - start}
