"""Decode once: a split's presized uint8 pixels in one memory-mapped file, so later epochs decode nothing.

Each image is stored resized to a short side of ``presize`` and landscape (portraits transposed), its long
side centre-cropped to at most ``max_aspect * presize``: the border a training crop slides over is kept, so
the random square crop position survives caching (only for images longer than ``max_aspect`` : 1 does the
range shrink). The file is keyed by presize, aspect cap and the size and mtime of every source file, written
under a temporary name and renamed into place, and rebuilt when any source file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from imagenette_sota import seeds
from imagenette_sota.data.dataset import DECODE_ERRORS, decode_error, draw_seed, open_rgb

log = logging.getLogger(__name__)

MAX_ASPECT = 1.5


def cache_key(items: Sequence[tuple[Path, int]], presize: int, max_aspect: float) -> str:
    """A digest of everything the cached pixels depend on (not the labels)."""
    digest = hashlib.sha1(f"{presize}:{max_aspect}".encode(), usedforsecurity=False)
    for path, _ in items:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def row_width(presize: int, max_aspect: float = MAX_ASPECT) -> int:
    """Columns of a cache row: the longest side an image keeps, ``presize`` x the aspect cap."""
    return round(presize * max_aspect)


def _as_is(item: tuple) -> tuple:
    """The builder's collate: one item as it is (a module-level function, picklable for spawned workers)."""
    return item


def landscape(img: Image.Image, presize: int, max_aspect: float) -> tuple[np.ndarray, bool]:
    """(3, presize, long) uint8 pixels of ``img`` turned landscape, and whether it was transposed."""
    w, h = img.size
    transposed = h > w
    if transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
        w, h = h, w
    keep = min(w, round(h * max_aspect))  # source columns kept: the centre, up to the aspect cap
    left = (w - keep) // 2
    long = min(max(presize, round(keep * presize / h)), row_width(presize, max_aspect))  # rounding: never past the row
    img = img.resize((long, presize), Image.Resampling.BILINEAR, box=(left, 0, left + keep, h))
    return np.asarray(img).transpose(2, 0, 1), transposed


class _Decode(Dataset):
    """Decodes one source image to its cache row (used once, by the builder's worker processes)."""

    def __init__(self, items: Sequence[tuple[Path, int]], presize: int, max_aspect: float, skip_bad: bool) -> None:
        self.items, self.presize, self.max_aspect, self.skip_bad = items, presize, max_aspect, skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, bool]:
        path = self.items[i][0]
        try:
            pixels, transposed = landscape(open_rgb(path, self.presize), self.presize, self.max_aspect)
        except DECODE_ERRORS as e:
            if not self.skip_bad:
                raise decode_error(path, e) from e
            log.warning("skipping unreadable image %s (%s)", path, e)
            return i, None, False
        return i, pixels, transposed


def build(
    items: Sequence[tuple[Path, int]],
    presize: int,
    folder: Path,
    max_aspect: float = MAX_ASPECT,
    num_workers: int = 0,
    skip_bad: bool = False,
) -> Path:
    """Decode ``items`` once into ``folder/<key>.npy`` (+ ``.json``) unless that cache exists; return the .npy."""
    key = cache_key(items, presize, max_aspect)
    pixels_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if meta_path.is_file() and pixels_path.is_file():
        return pixels_path
    folder.mkdir(parents=True, exist_ok=True)
    width = row_width(presize, max_aspect)
    tmp = folder / f".{key}.{os.getpid()}.npy.part"
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), 3, presize, width))
    extent, transposed, bad = np.zeros(len(items), np.int64), np.zeros(len(items), bool), []
    loader = DataLoader(
        _Decode(items, presize, max_aspect, skip_bad), batch_size=None, num_workers=num_workers, collate_fn=_as_is
    )
    try:
        for i, row, flip in loader:
            if row is None:
                bad.append(i)
                continue
            pixels[i, :, :, : row.shape[-1]] = row
            extent[i], transposed[i] = row.shape[-1], flip
        pixels.flush()
        del pixels
        os.replace(tmp, pixels_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {"presize": presize, "extent": extent.tolist(), "transposed": transposed.tolist(), "bad": bad}
    tmp_meta = meta_path.with_suffix(f".{os.getpid()}.part")
    with open(tmp_meta, "w") as f:  # fsynced: an empty metadata file would mark a broken cache complete
        f.write(json.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_meta, meta_path)  # the metadata's arrival is what marks the cache complete
    log.info("cached %d presized images in %s (%d unreadable skipped)", len(items) - len(bad), pixels_path, len(bad))
    return pixels_path


class CachedImages(Dataset):
    """(uint8 (3, presize, presize), label) from a cache: random crop position if ``train``, else centred."""

    def __init__(self, pixels_path: Path, items: Sequence[tuple[Path, int]], train: bool) -> None:
        meta = json.loads(pixels_path.with_suffix(".json").read_text())
        bad = set(meta["bad"])
        self.rows = [i for i in range(len(items)) if i not in bad]
        self.items = [items[i] for i in self.rows]  # (path, label) of each row, as PresizedImages holds them
        self.labels = [label for _, label in self.items]
        self.extent, self.transposed = meta["extent"], meta["transposed"]
        self.presize, self.pixels_path, self.train = meta["presize"], pixels_path, train
        self._pixels: np.ndarray | None = None  # opened lazily: each worker process maps the file itself

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> list[int]:
        """Labels in dataset order."""
        return self.labels

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        """Image and label at index ``key`` or ``(index, seed)``; a train crop is drawn with ``seed`` if given."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if self.train and seed is None:  # an index alone: the offset comes from the global RNG stream
            seed = draw_seed()
        crops, label = self.views(i, [seed if self.train else None])
        return crops[0], label

    def views(self, i: int, crop_seeds: Sequence[int | None]) -> tuple[Tensor, int]:
        """Image ``i``, one square crop per seed (``None``: the centre): (uint8 (k, 3, P, P), label)."""
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
        row, p = self.rows[i], self.presize
        slack = self.extent[row] - p
        crops = []
        for seed in crop_seeds:
            offset = slack // 2 if seed is None else int(torch.randint(slack + 1, (), generator=seeds.generator(seed)))
            crop = self._pixels[row, :, :, offset : offset + p]
            crops.append(
                torch.from_numpy(np.ascontiguousarray(crop.transpose(0, 2, 1) if self.transposed[row] else crop))
            )
        return torch.stack(crops), self.labels[i]
