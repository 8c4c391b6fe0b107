"""The time_to_90 section: configs/gpu_time_to_90.yaml fitted from scratch until val accuracy reaches the target."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import fast_paths
from benchmarks.gpu.data import device_data_module
from benchmarks.gpu.run import Run, free


def time_to_target(
    args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device, deadline: float
) -> dict[str, Any]:
    """Wall seconds of a fit of ``--t90-config`` from scratch until val accuracy >= target (or the best by then)."""
    import lightning as L

    from imagenette_sota import quiet
    from imagenette_sota.cli import ImagenetteCLI, ImagenetteTrainer
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.module import ImagenetteClassifier

    out: dict[str, Any] = {
        "config": str(args.t90_config),
        "loader": args.t90_loader,
        "target": args.t90_target,
        "deadline_s": deadline - time.perf_counter(),
        "history": [],
    }
    run.figures["time_to_90"] = out  # saved after every epoch: a timeout still leaves the history

    class StopAtTarget(L.Callback):
        """After each validation: record the accuracy; stop at the target or when the deadline has passed."""

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
                return
            acc, elapsed = float(trainer.callback_metrics["val/acc"]), time.perf_counter() - start
            size = trainer.datamodule.train_size
            out["history"].append({"epoch": trainer.current_epoch, "size": size, "acc": acc, "s": elapsed})
            print(f"time_to_90 epoch {trainer.current_epoch} ({size} px): val acc {acc:.4f} at {elapsed:.1f} s")
            if acc > out.get("best_acc", -1.0):
                out["best_acc"], out["best_epoch"] = acc, trainer.current_epoch
            if acc >= args.t90_target and "seconds" not in out:
                out["seconds"], out["epochs_run"] = elapsed, trainer.current_epoch + 1
                trainer.should_stop = True
            elif time.perf_counter() > deadline:
                out["stopped_by_budget"] = True
                trainer.should_stop = True
            run.save()

    free(device)
    overrides = ["--data.root", str(data_dir), "--data.num_workers", str(args.workers), "--seed_everything", "0"]
    overrides += [*quiet.CLI_ARGS, "--trainer.accelerator", "gpu" if device.type == "cuda" else device.type]
    if args.fp32:
        overrides += ["--trainer.precision", "32-true", "--model.channels_last", "false"]
    if args.smoke:  # the recipe's structure (stages, cycle) on a tiny model, batch and size
        overrides += ["--model.backbone", "imagenette_sota.models.xresnet18", "--data.presize", str(args.presize)]
        overrides += ["--data.batch_size", str(args.t90_bs), "--data.val_batch_size", str(2 * args.t90_bs)]
        overrides += ["--trainer.max_epochs", str(args.t90_epochs), "--trainer.benchmark", "false"]
        overrides += [f"--trainer.limit_{s}_batches={args.limit_batches}" for s in ("train", "val")]
    cli = ImagenetteCLI(
        ImagenetteClassifier,
        ImagenetteDataModule,
        trainer_class=ImagenetteTrainer,
        args=["--config", str(args.t90_config), *overrides],
        trainer_defaults={"callbacks": [StopAtTarget()]},
        save_config_callback=None,  # no logger: it would write config.yaml into the working directory
        run=False,  # the CLI instantiates the recipe; the fit below may swap the loader for the device-resident one
    )
    hparams = {k: v if isinstance(v, int | float | str) else str(v) for k, v in cli.model.hparams.items()}
    dm = cli.datamodule
    out["recipe"] = hparams | {
        "presize": dm.presize,
        "batch_size": dm.batch_size,
        "precision": str(cli.trainer.precision),
    }
    if args.t90_loader == "device":
        settings = cli.config["data"].as_dict() | {"augment": dm.augment}
        settings.pop("cache", None)
        dm = device_data_module(device, **settings)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, dm)
    out["fit_s"] = time.perf_counter() - start
    out["reached"] = "seconds" in out
    out["peak_gib"] = fast_paths.peak_gib(device)
    del cli, dm
    return out
