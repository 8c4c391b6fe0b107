"""Image-folder dataset that decodes and presizes on the CPU (fastai ``Resize(presize)``) to uint8 tensors."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms.functional import pil_to_tensor

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp")
NOISY_LEVELS = (0, 1, 5, 25, 50)


# What PIL raises for a file it cannot decode (truncated, not an image, too large, corrupt headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImageError(RuntimeError):
    """An image file that cannot be decoded."""


def decode_error(path: Path, error: Exception) -> BadImageError:
    """The error for an undecodable ``path``: what happened and what to do."""
    return BadImageError(
        f"{path}: cannot decode image ({error}). Replace or delete the file, or pass "
        "skip_bad_images=True to skip such files."
    )


def scan_split(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(path, label) for every image under ``split_dir/<class>/``, sorted; stray non-image files are skipped."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist: the dataset folder needs train/ and val/ subfolders")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if missing := sorted(set(classes) - set(found)):
        raise FileNotFoundError(f"{split_dir} lacks class folder(s) {missing}: every split needs every class")
    if extra := sorted(set(found) - set(classes)):
        raise ValueError(f"{split_dir} has class folder(s) {extra} that the training split does not have")
    items, strays = [], 0
    for label, wnid in enumerate(classes):
        files = sorted(p for p in (split_dir / wnid).iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        strays += len(files) - len(images)
        if not images:
            raise FileNotFoundError(f"{split_dir / wnid} holds no images: add images or remove the folder")
        items += [(p, label) for p in images]
    if strays:
        log.warning("%s: skipped %d file(s) that are not %s images", split_dir, strays, "/".join(IMAGE_EXTENSIONS))
    return items


def noisy_labels(csv_path: Path, level: int, classes: Sequence[str]) -> dict[str, int]:
    """Relative path -> label at ``level`` % label noise, from Imagenette's ``noisy_*.csv``."""
    if level not in NOISY_LEVELS:
        raise ValueError(f"noisy_labels={level}: choose one of {NOISY_LEVELS} (percent of noisy labels)")
    index = {wnid: i for i, wnid in enumerate(classes)}
    with open(csv_path, newline="") as f:
        return {row["path"]: index[row[f"noisy_labels_{level}"]] for row in csv.DictReader(f)}


def open_rgb(path: Path, min_size: int) -> Image.Image:
    """Decode ``path`` as RGB; JPEGs decode straight to >= ``min_size`` via DCT scaling (fast on big images)."""
    with Image.open(path) as img:
        img.draft("RGB", (min_size, min_size))  # no-op unless JPEG and at least 2x larger than needed
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, don't clip
            img = img.point(lambda v: v / 256).convert("L")
        return img.convert("RGB")


def presize(img: Image.Image, size: int, position: tuple[float, float]) -> Image.Image:
    """Largest centred-at-``position`` square crop, resized to ``size`` x ``size`` (fastai ``Resize``)."""
    w, h = img.size
    side = min(w, h)
    left, top = round(position[0] * (w - side)), round(position[1] * (h - side))
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


class PresizedImages(Dataset):
    """(uint8 (3, presize, presize), label) pairs; random square crop position if ``train``, else centred."""

    def __init__(
        self, items: Sequence[tuple[Path, int]], presize: int, train: bool, skip_bad_images: bool = False
    ) -> None:
        self.items, self.presize, self.train, self.skip_bad_images = (
            list(items),
            presize,
            train,
            skip_bad_images,
        )
        self.skipped = 0  # per process: each DataLoader worker counts its own

    def __len__(self) -> int:
        return len(self.items)

    @property
    def targets(self) -> list[int]:
        """Labels in dataset order."""
        return [label for _, label in self.items]

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        path, label = self.items[i]
        position = tuple(torch.rand(2).tolist()) if self.train else (0.5, 0.5)
        try:
            img = presize(open_rgb(path, self.presize), self.presize, position)
        except DECODE_ERRORS as e:
            if not self.skip_bad_images:
                raise decode_error(path, e) from e
            self.skipped += 1
            log.warning("skipping unreadable image %s (%s); %d skipped so far in this process", path, e, self.skipped)
            return None
        return pil_to_tensor(img), label


def collate_skipping(batch: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor]:
    """default_collate over the items that decoded (``None`` marks a skipped bad image)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        raise BadImageError(f"all {len(batch)} images of a batch failed to decode (see the warnings above)")
    return default_collate(kept)
