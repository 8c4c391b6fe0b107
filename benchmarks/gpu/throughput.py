"""The throughput and compiled sections: model-only and end-to-end training images/s and peak memory per size."""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks import fast_paths
from benchmarks.gpu.data import device_data_module
from benchmarks.gpu.run import NEEDS, Run, free
from benchmarks.gpu.trainer import quiet_trainer


def model_only(args: argparse.Namespace, size: int, device: torch.device, compile: bool) -> dict[str, Any]:
    """Training images/s on random tensors: the model's arithmetic alone (bf16 + channels_last unless --fp32)."""
    free(device)
    model = fast_paths.build(args.arch, device, channels_last=not args.fp32, compile=compile)
    opt = fast_paths.optimizer(model)
    x, y = fast_paths.batch(args.bs, size, device, channels_last=not args.fp32)
    out = fast_paths.time_steps(model, opt, x, y, not args.fp32, args.batches, args.warmup, label_smoothing=0.1)
    out["peak_gib"] = fast_paths.peak_gib(device)
    if compile:
        out["compile_s"] = out["first_step_s"]
    del model, opt, x, y
    return out


def end_to_end(
    args: argparse.Namespace, data_dir: Path, size: int, device: torch.device, loader: str, compile: bool
) -> dict[str, Any]:
    """Training images/s of a Lightning fit: data module + on-device Augment + ImagenetteClassifier, bf16."""
    import lightning as L

    from imagenette_sota import models
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.module import ImagenetteClassifier

    class Clock(L.Callback):
        """Images/s from the end of the warm-up batches to the end of the last batch (device synchronized)."""

        def __init__(self) -> None:
            self.start, self.images, self.first_s, self.fit_start, self.seconds = 0.0, 0, 0.0, 0.0, 0.0

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.fit_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            if batch_idx == 0:
                fast_paths.sync(device)
                self.first_s = time.perf_counter() - self.fit_start
            if batch_idx == args.warmup - 1:
                fast_paths.sync(device)
                self.start = time.perf_counter()
            elif batch_idx >= args.warmup:
                self.images += len(batch[1])
                if batch_idx == args.warmup + args.batches - 1:
                    fast_paths.sync(device)
                    self.seconds = time.perf_counter() - self.start

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not self.seconds and self.images:  # the epoch had fewer batches than asked for
                fast_paths.sync(device)
                self.seconds = time.perf_counter() - self.start

    free(device)
    common = {
        "root": data_dir,
        "presize": args.presize,
        "train_size": size,
        "batch_size": args.bs,
        "num_workers": args.workers,
    }
    dm = device_data_module(device, **common) if loader == "device" else ImagenetteDataModule(cache=True, **common)
    model = ImagenetteClassifier(
        backbone=getattr(models, args.arch), num_classes=10, label_smoothing=0.1, channels_last=not args.fp32
    )
    if compile:
        model.model.compile()  # as ImagenetteClassifier(compile=True), after channels_last
    clock = Clock()
    trainer = quiet_trainer(
        device,
        args,
        max_epochs=1,
        limit_train_batches=args.warmup + args.batches,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, dm)
    out = {
        "ips": clock.images / clock.seconds,
        "first_batch_s": clock.first_s,
        "peak_gib": fast_paths.peak_gib(device),
    }
    if compile:
        out["compile_s"] = clock.first_s
    del trainer, model, dm
    return out


def throughput(
    args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device, compile: bool
) -> dict[str, Any]:
    """Model-only and end-to-end images/s and peak memory at each size (eager, or compiled)."""
    name = "compiled" if compile else "throughput"
    out: dict[str, Any] = {}
    run.figures[name] = out  # visible to save() as it fills
    for size in args.sizes:
        if out and run.left() < NEEDS[name] / (1 if compile else 2):
            out[str(size)] = f"skipped: {run.left():.0f} s left"
            continue
        figures: dict[str, Any] = out.setdefault(str(size), {})
        try:
            figures["model_only"] = model_only(args, size, device, compile)
        except Exception as e:
            traceback.print_exc()
            figures["model_only"] = f"{type(e).__name__}: {e}"[:500]
        print(f"{name} {size} px model-only: {figures['model_only']}", flush=True)
        run.save()
        if compile:  # the faster loader of the eager run, or the workers if there was none
            eager = run.figures.get("throughput", {}).get(str(size))
            loaders = [eager.get("best_loader", "workers") if isinstance(eager, dict) else "workers"]
        else:
            loaders = ["workers", "device"]
        for loader in loaders:
            try:
                figures[f"e2e_{loader}"] = end_to_end(args, data_dir, size, device, loader, compile)
                if isinstance(figures["model_only"], dict):
                    figures[f"ratio_{loader}"] = figures[f"e2e_{loader}"]["ips"] / figures["model_only"]["ips"]
            except Exception as e:
                traceback.print_exc()
                figures[f"e2e_{loader}"] = f"{type(e).__name__}: {e}"[:500]
            print(f"{name} {size} px e2e ({loader} loader): {figures[f'e2e_{loader}']}", flush=True)
            run.save()
        measured = {k: figures[f"e2e_{k}"]["ips"] for k in loaders if isinstance(figures.get(f"e2e_{k}"), dict)}
        if measured:
            figures["best_loader"] = max(measured, key=measured.__getitem__)
    return out
