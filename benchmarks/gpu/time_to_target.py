"""The time_to_90 section: a from-scratch fit until validation accuracy reaches the target."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import fast_paths
from benchmarks.gpu.data import device_data_module
from benchmarks.gpu.run import Run, free
from benchmarks.gpu.trainer import quiet_trainer


def time_to_target(
    args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device, deadline: float
) -> dict[str, Any]:
    """Wall seconds of a from-scratch fit until val accuracy >= target (or the best accuracy by the deadline)."""
    import lightning as L

    from imagenette_sota import models
    from imagenette_sota.callbacks import ProgressiveResize, Stage
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.data.augment import Augment
    from imagenette_sota.module import ImagenetteClassifier
    from imagenette_sota.schedule import Cycle

    out: dict[str, Any] = {
        "recipe": {
            "arch": args.t90_arch,
            "epochs": args.t90_epochs,
            "sizes": f"{args.t90_small} px until epoch {args.t90_switch}, then {args.t90_size} px",
            "val_size": args.t90_size,
            "presize": args.presize,
            "bs": args.t90_bs,
            "lr": args.t90_lr,
            "label_smoothing": 0.1,
            "min_scale": args.t90_min_scale,
            "loader": args.t90_loader,
            "precision": "32-true" if args.fp32 else "bf16-mixed",
            "channels_last": not args.fp32,
        },
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
    L.seed_everything(0, verbose=False)
    common = {
        "root": data_dir,
        "presize": args.presize,
        "train_size": args.t90_small,
        "val_size": args.t90_size,
        "batch_size": args.t90_bs,
        "val_batch_size": 2 * args.t90_bs,
        "num_workers": args.workers,
        "augment": Augment(min_scale=args.t90_min_scale),
    }
    if args.t90_loader == "device":
        dm = device_data_module(device, **common)
    else:
        dm = ImagenetteDataModule(cache=True, **common)
    model = ImagenetteClassifier(
        backbone=getattr(models, args.t90_arch),
        num_classes=10,
        cycle=Cycle(args.t90_lr),
        label_smoothing=0.1,
        channels_last=not args.fp32,
    )
    stages = {0: Stage(args.t90_small), args.t90_switch: Stage(args.t90_size)}
    trainer = quiet_trainer(
        device,
        args,
        max_epochs=args.t90_epochs,
        callbacks=[ProgressiveResize(stages), StopAtTarget()],
        **({"limit_train_batches": args.limit_batches, "limit_val_batches": args.limit_batches} if args.smoke else {}),
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    out["fit_s"] = time.perf_counter() - start
    out["reached"] = "seconds" in out
    out["peak_gib"] = fast_paths.peak_gib(device)
    del trainer, model, dm
    return out
