"""Training throughput (images/s) of ImagenetteClassifier vs a fastai Learner: same model, size, batch, data.

    python -m benchmarks.train_throughput [--settings xresnet18:64 xresnet50:128 --bs 64 --batches 20]

Each side trains from scratch on imagenette2-160 through its own full pipeline (loader, batch augmentation,
forward, backward, optimizer and schedule step); the clock runs from the end of the warm-up batches to the
end of the last timed batch. Last line: one JSON object with ``ratio_vs_fastai`` per setting.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from benchmarks.common import fastai_dataloaders, imagenette160, report
from imagenette_sota import models, quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.module import ImagenetteClassifier


class _Clock(L.Callback):
    """Images/s between the end of batch ``warmup - 1`` and the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.images = warmup, 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx >= self.warmup:
            self.images += len(batch[1])
            self.ips = self.images / (time.perf_counter() - self.start)


def ours(data_dir, arch: str, size: int, args: argparse.Namespace) -> float:
    """Images/s of a Lightning fit over ``args.warmup + args.batches`` batches."""
    dm = ImagenetteDataModule(
        root=data_dir, presize=args.presize, train_size=size, batch_size=args.bs, num_workers=args.workers
    )
    model = ImagenetteClassifier(backbone=getattr(models, arch), num_classes=10)  # the default cycle: lr 3e-3
    clock = _Clock(args.warmup)
    trainer = quiet.trainer(
        accelerator="auto",
        max_epochs=1,
        limit_train_batches=args.warmup + args.batches,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, dm)
    return clock.ips


def fastai_learner(data_dir, arch: str, size: int, args: argparse.Namespace) -> float:
    """Images/s of fastai's fit_one_cycle with the same model, data pipeline settings and batch count."""
    from fastai.callback.core import Callback, CancelFitException
    from fastai.vision.all import CrossEntropyLossFlat, Learner, accuracy
    from fastai.vision.models import xresnet as fa_models

    class Clock(Callback):
        order = 99

        def before_fit(self) -> None:
            self.seen, self.start, self.images = 0, 0.0, 0

        def after_batch(self) -> None:
            if not self.training:
                return
            self.seen += 1
            if self.seen == args.warmup:
                self.start = time.perf_counter()
            elif self.seen > args.warmup:
                self.images += len(self.yb[0])
                self.ips = self.images / (time.perf_counter() - self.start)
                if self.seen == args.warmup + args.batches:
                    raise CancelFitException

    dls = fastai_dataloaders(data_dir, args.presize, size, args.bs, args.workers)
    clock = Clock()
    learn = Learner(
        dls, getattr(fa_models, arch)(n_out=10), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=clock
    )
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-3)
    return clock.ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["xresnet18:64", "xresnet50:128"], help="arch:size")
    parser.add_argument("--presize", type=int, default=160)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--skip-fastai", action="store_true")
    args = parser.parse_args()

    data_dir = imagenette160()
    figures: dict = {
        "bs": args.bs,
        "presize": args.presize,
        "batches": args.batches,
        "torch_threads": torch.get_num_threads(),
    }
    for setting in args.settings:
        arch, size = setting.split(":")
        key = f"{arch}_{size}"
        figures[f"{key}_ours_ips"] = round(ours(data_dir, arch, int(size), args), 1)
        print(f"{key} ours: {figures[f'{key}_ours_ips']} images/s", flush=True)
        if not args.skip_fastai:
            figures[f"{key}_fastai_ips"] = round(fastai_learner(data_dir, arch, int(size), args), 1)
            figures[f"{key}_ratio_vs_fastai"] = round(figures[f"{key}_ours_ips"] / figures[f"{key}_fastai_ips"], 3)
            print(f"{key} fastai: {figures[f'{key}_fastai_ips']} images/s", flush=True)
    report(figures)


if __name__ == "__main__":
    main()
