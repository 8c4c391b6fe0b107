"""The run's data: the archive extracted and cached by the suite's own code, and batches held on the device."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from imagenette_sota.data import ImagenetteDataModule


def extract(archive: Path, md5: str, scratch: Path, workers: int) -> tuple[Path, dict[str, float]]:
    """Extract ``archive`` with the suite's own prepare_data into ``scratch``; return the folder and seconds."""
    from imagenette_sota.data import ImagenetteDataModule

    dm = ImagenetteDataModule(root=scratch, url=str(archive), md5=md5, num_workers=workers, cache=False)
    start = time.perf_counter()
    dm.prepare_data()
    return dm.data_dir, {"extract_s": time.perf_counter() - start}


def build_cache(data_dir: Path, presize: int, workers: int) -> float:
    """Fill the presized cache of both splits once (``cache=True``); return the seconds it took."""
    from imagenette_sota.data import ImagenetteDataModule

    start = time.perf_counter()
    dm = ImagenetteDataModule(root=data_dir, presize=presize, train_size=presize, num_workers=workers, cache=True)
    dm.prepare_data()
    return time.perf_counter() - start


class DeviceBatches:
    """Batches cut from a cached split held whole on the device: as ``CachedImages`` crops, without workers.

    Train: a new random order each pass and a random crop position along each image's long side; otherwise the
    dataset order and the centred crop. Has ``dataset`` (the split it serves), ``batch_size`` and ``drop_last`` like
    a DataLoader, for code that counts steps (``schedule.epoch_steps``).
    """

    def __init__(
        self, dataset: Dataset, pixels: Tensor, labels: Tensor, slack: Tensor, transposed: Tensor, batch_size: int
    ) -> None:
        self.pixels, self.labels, self.slack, self.transposed = pixels, labels, slack, transposed
        self.dataset, self.batch_size = dataset, batch_size
        self.train = self.drop_last = dataset.train

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, p, device = len(self.labels), self.pixels.shape[-2], self.pixels.device
        order = torch.randperm(n, device=device) if self.train else torch.arange(n, device=device)
        cols = torch.arange(p, device=device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            slack = self.slack[idx]
            offset = (torch.rand(len(idx), device=device) * (slack + 1)).long() if self.train else slack // 2
            index = (offset[:, None] + cols).view(-1, 1, 1, p).expand(-1, 3, p, p)  # (B, 3, P, P) column indices
            crop = self.pixels[idx].gather(3, index)  # (B, 3, P, W) -> (B, 3, P, P)
            crop = torch.where(self.transposed[idx].view(-1, 1, 1, 1), crop.transpose(2, 3), crop)
            yield crop, self.labels[idx]


def device_data_module(device: torch.device, **kwargs: Any) -> ImagenetteDataModule:
    """An ImagenetteDataModule (cache=True) whose loaders serve ``DeviceBatches`` from the device."""
    from imagenette_sota.data import ImagenetteDataModule

    class DeviceResident(ImagenetteDataModule):
        """Both cached splits copied whole to the device once; augmentation as usual in on_after_batch_transfer."""

        def __init__(self) -> None:
            super().__init__(cache=True, **kwargs)
            self._on_device: dict[str, tuple[Tensor, ...]] = {}

        def _split(self, name: str) -> tuple[Tensor, ...]:
            if name not in self._on_device:
                ds = self.train_set if name == "train" else self.val_set
                if ds is None:
                    raise RuntimeError("call setup() before asking for a dataloader")
                rows = np.asarray(ds.rows)
                pixels = torch.from_numpy(np.load(ds.pixels_path, mmap_mode="r")[rows]).to(device)
                extent = torch.as_tensor(np.asarray(ds.extent)[rows], device=device)
                transposed = torch.as_tensor(np.asarray(ds.transposed)[rows], device=device)
                labels = torch.as_tensor(ds.labels, device=device)
                self._on_device[name] = (pixels, labels, extent - ds.presize, transposed)
            return self._on_device[name]

        def train_dataloader(self) -> DeviceBatches:  # type: ignore[override]
            return DeviceBatches(self.train_set, *self._split("train"), self.batch_size)

        def val_dataloader(self) -> DeviceBatches:  # type: ignore[override]
            return DeviceBatches(self.val_set, *self._split("val"), self.eval_batch_size)

    return DeviceResident()
