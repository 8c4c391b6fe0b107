"""Soak: a long fit on the mini archive, watching this process's memory and open files for leaks.

    python -m benchmarks.soak [--epochs 20 --workers 2 --cache]

xresnet18 with progressive resizing (the image size ramps up and the batch size down, so the train loader and its
worker processes are rebuilt every epoch), TensorBoard logging, the Inspection callback, atomic checkpoints every
epoch (``last.ckpt`` and the newest epoch's), and TTA at the end. After every epoch it prints the resident memory
(MiB) of this process, the proportional memory (PSS: shared pages split among the sharers) of it with its children
(the DataLoader workers), and the number of open file descriptors. A leak shows as growth after the first epochs
(the first one pays for imports, allocator pools and worker start-up). Last line: one JSON object with the
per-epoch figures, their growth from epoch 2 to the last, and the TTA accuracy.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.common import imagenette160, report
from imagenette_sota import quiet
from imagenette_sota.callbacks import Inspection, OneCycles, ProgressiveResize, Ramp, TrainScalars, tta
from imagenette_sota.checkpoint_io import AtomicCheckpointIO
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import xresnet18
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mib() -> float:
    """Resident memory of this process in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_MIB


def pss_mib(pid: int | str = "self") -> float:
    """Proportional set size of process ``pid`` in MiB: shared pages count by their share (0 if it has gone)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")) / 1024


def children() -> list[int]:
    """Process ids of this process's children (DataLoader workers, ...)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def open_fds() -> int:
    """File descriptors this process holds open."""
    return len(os.listdir("/proc/self/fd"))


class Watch(L.Callback):
    """Records and prints RSS and open file descriptors at the end of every epoch (after its validation)."""

    def __init__(self) -> None:
        self.rss: list[float] = []
        self.pss_total: list[float] = []
        self.fds: list[int] = []
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gc.collect()
        rss = rss_mib()
        self.rss.append(round(rss, 1))
        workers = children()
        self.pss_total.append(round(pss_mib() + sum(pss_mib(pid) for pid in workers), 1))
        self.fds.append(open_fds())
        print(
            f"epoch {trainer.current_epoch + 1}: rss {rss:.0f} MiB, with {len(workers)} child processes "
            f"{self.pss_total[-1]:.0f} MiB (pss), {self.fds[-1]} open fds, {time.perf_counter() - self.start:.0f} s",
            flush=True,
        )


def growth(values: list[float] | list[int]) -> float:
    """Change from epoch 2 to the last (0 with fewer than 2 epochs)."""
    return round(values[-1] - values[1], 1) if len(values) >= 2 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--presize", type=int, default=128)
    parser.add_argument("--min-size", type=int, default=64, help="px at the start of the ramp")
    parser.add_argument("--max-size", type=int, default=112, help="px from 3/4 of the epochs on")
    parser.add_argument("--bs", type=int, default=16, help="batch size at max-size (larger below it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="the memory-mapped presized cache")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    dm = ImagenetteDataModule(
        root=imagenette160(mini=True),
        presize=args.presize,
        train_size=args.min_size,
        batch_size=args.bs,
        num_workers=args.workers,
        cache=args.cache,
    )
    model = ImagenetteClassifier(
        backbone=xresnet18, num_classes=10, cycle=Cycle(3e-3), label_smoothing=0.1, mixup_alpha=0.4
    )
    end = max(1, args.epochs * 3 // 4)
    ramp = Ramp(args.min_size, args.max_size, start_epoch=end // 3, end_epoch=end, multiple=16, batch_size=args.bs)
    watch = Watch()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = quiet.trainer(
            accelerator="auto",
            devices=1,
            max_epochs=args.epochs,
            logger=TensorBoardLogger(tmp, name="soak"),
            enable_checkpointing=True,
            callbacks=[
                ProgressiveResize(ramp=ramp),
                OneCycles(),  # the ramp's batch sizes change: the module's cycle timed to them
                TrainScalars(),
                Inspection(),
                LearningRateMonitor("step"),
                ModelCheckpoint(Path(tmp) / "ckpt", save_last=True),  # the newest epoch's and last.ckpt
                watch,
            ],
            plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(model, datamodule=dm)
        val_acc = trainer.callback_metrics["val/acc"].item()  # before predict clears the metrics
        probs, targets = tta(trainer, model, dm)
        seconds = time.perf_counter() - watch.start
    figures = {
        "benchmark": "soak",
        "device": str(model.device),
        "epochs": args.epochs,
        "workers": args.workers,
        "cache": args.cache,
        "rss_mib": watch.rss,
        "pss_total_mib": watch.pss_total,
        "fds": watch.fds,
        "rss_growth_mib": growth(watch.rss),
        "pss_total_growth_mib": growth(watch.pss_total),
        "fd_growth": growth(watch.fds),
        "tta_acc": round((probs.argmax(1) == targets).float().mean().item(), 4),
        "val_acc": round(val_acc, 4),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    report(figures)


if __name__ == "__main__":
    main()
