"""Shared helpers for the benchmark scripts: locating the real data, timing, and the JSON last line."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMAGENETTE_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA_ROOT = Path(os.environ.get("IMAGENETTE_BENCH_ROOT", REPO / "data"))
FULL_ARCHIVE = SHARED_DATA / "imagenette2-160.tgz"
FULL_MD5 = "a335af0f5540a0fcdaca27d122aebf4a"  # the repacked local copy (../shared/data/README.md)
MINI_ARCHIVE = SHARED_DATA / "imagenette2-160-mini.tgz"  # 20 train + 10 val images per class
MINI_MD5 = "ccd053d1de8a33be1698e43ec9141c1b"


def imagenette160(mini: bool = False) -> Path:
    """The extracted imagenette2-160 (or mini) folder, extracted from ../shared/data by the suite's code once."""
    from imagenette_sota.data import ImagenetteDataModule

    archive, md5 = (MINI_ARCHIVE, MINI_MD5) if mini else (FULL_ARCHIVE, FULL_MD5)
    dm = ImagenetteDataModule(root=DATA_ROOT, url=str(archive), md5=md5, cache=False)  # extract only
    dm.prepare_data()
    return dm.data_dir


def images_per_second(batches: Iterable, consume: Callable[[object], int], warmup: int = 2) -> float:
    """Images/s of ``consume`` over ``batches`` after ``warmup`` batches (worker start-up excluded)."""
    n, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        count = consume(batch)
        if start is not None and i >= warmup:
            n += count
    if start is None:
        raise ValueError("fewer batches than the warm-up")
    return n / (time.perf_counter() - start)


def peak_rss_gib() -> float:
    """Peak resident memory of this process (since ``reset_peak_rss``) and its finished children, GiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:  # VmHWM: the peak that reset_peak_rss can reset (Linux)
        status = Path("/proc/self/status").read_text()
        own = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh (Linux ``clear_refs``; elsewhere nothing changes)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def machine() -> str:
    """A short description of this machine for the record."""
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"


def report(figures: dict) -> None:
    """Print the figures, the last line one JSON object."""
    figures = {"machine": machine(), **figures}
    print(json.dumps(figures), flush=True)


def fastai_dataloaders(
    data_dir: Path, presize: int, size: int, bs: int, workers: int | None, device: str | None = None
):
    """fastai's DataBlock for the chapter: ``Resize(presize)``, ``aug_transforms(size, min_scale=0.75)``, Normalize.

    ``workers`` None: fastai's own default (``defaults.cpus``, every core up to 16).
    """
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        GrandparentSplitter,
        ImageBlock,
        Normalize,
        Resize,
        aug_transforms,
        get_image_files,
        imagenet_stats,
        parent_label,
    )

    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=GrandparentSplitter(valid_name="val"),
        get_y=parent_label,
        item_tfms=Resize(presize),
        batch_tfms=[*aug_transforms(size=size, min_scale=0.75), Normalize.from_stats(*imagenet_stats)],
    )
    workers_kw = {} if workers is None else {"num_workers": workers}
    return block.dataloaders(data_dir, bs=bs, device=torch.device(device) if device else None, **workers_kw)


def tiny_checkpoint(
    data_dir: Path, path: Path, presize: int = 64, size: int = 32, steps: int = 4, batch_size: int = 32
) -> Path:
    """A real checkpoint of a few training steps (xresnet18) on ``data_dir``, for the inference benchmarks."""
    import lightning as L

    from imagenette_sota import quiet
    from imagenette_sota.data import ImagenetteDataModule
    from imagenette_sota.models import xresnet18
    from imagenette_sota.module import ImagenetteClassifier

    L.seed_everything(0, verbose=False)
    dm = ImagenetteDataModule(root=data_dir, presize=presize, train_size=size, batch_size=batch_size, num_workers=0)
    model = ImagenetteClassifier(backbone=xresnet18, num_classes=dm.num_classes)
    trainer = quiet.trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return path
