"""Shared helpers for the benchmark scripts: locating the real data, first runs on fresh data roots, the precision
both sides run at, the memory of a process tree, timing, and the JSON last line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import get_args

from imagenette_sota.hardware import cpu_bf16
from imagenette_sota.predict import Precision

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMAGENETTE_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA_ROOT = Path(os.environ.get("IMAGENETTE_BENCH_ROOT", REPO / "data"))
FULL_ARCHIVE = SHARED_DATA / "imagenette2-160.tgz"
FULL_MD5 = "a335af0f5540a0fcdaca27d122aebf4a"  # the repacked local copy (../shared/data/README.md)
MINI_ARCHIVE = SHARED_DATA / "imagenette2-160-mini.tgz"  # 20 train + 10 val images per class
MINI_MD5 = "ccd053d1de8a33be1698e43ec9141c1b"


# Lightning's name of each precision the benchmarks compare ("32", "bf16": the Predictor's names).
TRAINER_PRECISION: dict[str, str] = {"32": "32-true", "bf16": "bf16-mixed"}


def archive(mini: bool = False) -> tuple[Path, str]:
    """The imagenette2-160 (or mini) archive in ../shared/data and its md5."""
    return (MINI_ARCHIVE, MINI_MD5) if mini else (FULL_ARCHIVE, FULL_MD5)


def imagenette160(mini: bool = False) -> Path:
    """The extracted imagenette2-160 (or mini) folder, extracted from ../shared/data by the suite's code once."""
    from imagenette_sota.data import ImagenetteDataModule

    path, md5 = archive(mini)
    dm = ImagenetteDataModule(root=DATA_ROOT, url=str(path), md5=md5, cache=False)  # extract only
    dm.prepare_data()
    return dm.data_dir


@contextlib.contextmanager
def fresh_root() -> Iterator[Path]:
    """An empty data root for one first run (the run extracts the archive and builds any cache there), then removed."""
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA_ROOT, prefix="first-run-") as root:
        yield Path(root)


def best_precision() -> Precision:
    """The faster precision on this CPU: bf16 where it has bf16 units (elsewhere bf16 is emulated, slower), else 32."""
    return "bf16" if cpu_bf16() else "32"


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision``: both sides', every run's; by default ``best_precision``, the best of each side on this CPU."""
    help_ = "every run, both sides (default: bf16 where the CPU has bf16 units, else 32)"
    p.add_argument("--precision", choices=get_args(Precision), default=best_precision(), help=help_)


def with_first_run(name: str, run: dict, memory: PeakMemory) -> dict:
    """One side's run: its figures, the peak memory of its process tree and ``first_run_s`` (the preparation and
    the fit: what a first run costs), each key prefixed ``name_``."""
    run = run | memory.figures() | {"first_run_s": run["prepare_s"] + run["fit_s"]}
    return {f"{name}_{key}": value for key, value in run.items()}


def ratio(figures: dict, runs: tuple[str, str], key: str) -> float | None:
    """``{a}_{key} / {b}_{key}`` of the two runs ``(a, b)``; None where either figure is missing (or zero)."""
    a, b = (figures.get(f"{run}_{key}") for run in runs)
    return a / b if a and b else None


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


class PeakMemory:
    """Peak memory of this process and every process below it, summed, sampled in a background thread (psutil).

    ``peak_rss_gib``: the resident sets summed (a page several processes share, as forked loader workers share their
    parent's, counts once in each); ``peak_pss_gib``: each shared page split among its sharers (Linux), what the tree
    holds (sharers outside the tree count too, as other processes mapping the same libraries: compare on a quiet
    machine). PSS is read every ``pss_every`` samples only: reading it costs tens of ms in a large process.
    """

    def __init__(self, interval: float = 0.2, pss_every: int = 25) -> None:
        self.interval, self.pss_every = interval, pss_every
        self.start_rss = self.peak_rss = self.peak_pss = 0
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.start_rss = self.sample(pss=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(pss=True)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._samples += 1
            self.sample(pss=self._samples % self.pss_every == 0)

    def sample(self, pss: bool = False) -> int:
        """Sum the tree's resident sets (and proportional sets if ``pss``) now, keep the peaks; the RSS sum, bytes."""
        import psutil

        me = psutil.Process()
        rss = pss_sum = 0
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker may end between the listing and the reading
                memory = process.memory_full_info() if pss else process.memory_info()
                rss += memory.rss
                pss_sum += getattr(memory, "pss", memory.rss)
        self.peak_rss = max(self.peak_rss, rss)
        if pss:
            self.peak_pss = max(self.peak_pss, pss_sum)
        return rss

    def figures(self) -> dict[str, float]:
        """GiB: the peaks, and the RSS sum when sampling began (what earlier runs in this process left held)."""
        gib = {"peak_rss_gib": self.peak_rss, "peak_pss_gib": self.peak_pss, "rss_at_start_gib": self.start_rss}
        return {key: value / 2**30 for key, value in gib.items()}


def machine() -> str:
    """A short description of this machine for the record."""
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"


def rounded(figures: dict) -> dict:
    """Floats (also inside lists) to 4 decimals, for the JSON line."""

    def r(v):
        return round(v, 4) if isinstance(v, float) else [r(x) for x in v] if isinstance(v, list) else v

    return {k: r(v) for k, v in figures.items()}


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
