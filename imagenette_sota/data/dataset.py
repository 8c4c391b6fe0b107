"""Image datasets that decode and presize on the CPU (fastai ``Resize(presize)``) to uint8 tensors; their sampler."""

from __future__ import annotations

import csv
import itertools
import logging
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, default_collate
from torchvision.transforms.functional import pil_to_tensor

from imagenette_sota import seeds

log = logging.getLogger(__name__)

NOISY_LEVELS = (0, 1, 5, 25, 50)


# What PIL raises for a file it cannot decode (truncated, not an image, too large, corrupt headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadImageError(RuntimeError):
    """An image file that cannot be decoded."""


def decode_error(path: Path, error: Exception) -> BadImageError:
    """The error for an undecodable ``path``: what happened and what to do."""
    if isinstance(error, Image.DecompressionBombError):
        return BadImageError(
            f"{path}: too large to decode safely ({error}). Downscale the file, raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust it, or pass skip_bad_images=True to skip such files."
        )
    return BadImageError(
        f"{path}: cannot decode image ({error}). Replace or delete the file, or pass "
        "skip_bad_images=True to skip such files."
    )


def noisy_labels(csv_path: Path, level: int) -> dict[str, str]:
    """Relative path -> class folder (wnid) at ``level`` % label noise, from Imagenette's ``noisy_*.csv``."""
    if level not in NOISY_LEVELS:
        raise ValueError(f"noisy_labels={level}: choose one of {NOISY_LEVELS} (percent of noisy labels)")
    column = f"noisy_labels_{level}"
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if missing := {"path", column} - set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}: use Imagenette's noisy_*.csv")
        return {row["path"]: row[column] for row in reader}


def relabel(
    items: list[tuple[Path, int]], data_dir: Path, classes: Sequence[str], level: int
) -> list[tuple[Path, int]]:
    """``items`` (under ``data_dir``) with the labels of Imagenette's ``noisy_*.csv`` at ``level`` % noise."""
    csvs = sorted(data_dir.glob("noisy_*.csv"))
    if not csvs:
        raise FileNotFoundError(f"{data_dir} has no noisy_*.csv: noisy_labels needs the official CSV")
    labels, index = noisy_labels(csvs[0], level), {wnid: i for i, wnid in enumerate(classes)}
    relabelled = []
    for path, _ in items:
        key = path.relative_to(data_dir).as_posix()
        if key not in labels:
            raise KeyError(f"{csvs[0]} has no row for {key}: use the CSV that came with this dataset")
        if labels[key] not in index:
            raise ValueError(f"{csvs[0]}: label {labels[key]!r} of {key} is not a class folder of train/")
        relabelled.append((path, index[labels[key]]))
    # Rows for training images that are not on disk (deleted bad files, a subset) are ignored, and counted.
    used = {path.relative_to(data_dir).as_posix() for path, _ in items}
    if ignored := sorted(k for k in labels if k.startswith("train/") and k not in used):
        log.warning(
            "%s: ignored %d row(s) for training images that are not in %s (e.g. %s)",
            csvs[0],
            len(ignored),
            data_dir / "train",
            ", ".join(ignored[:3]),
        )
    changed = sum(a[1] != b[1] for a, b in zip(items, relabelled, strict=True))
    log.info("noisy_labels=%d: %d of %d training labels differ from the folders", level, changed, len(items))
    return relabelled


def open_rgb(path: Path, min_size: int) -> Image.Image:
    """Decode ``path`` as RGB; JPEGs decode straight to >= ``min_size`` via DCT scaling (fast on big images).

    More pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` left to decode raise ``DecompressionBombError``.
    """
    with warnings.catch_warnings():
        # PIL warns on the header's size, but a big JPEG decodes draft-scaled: check what is decoded instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)  # raises DecompressionBombError itself beyond twice the limit
    with img:
        img.draft("RGB", (min_size, min_size))  # no-op unless JPEG and at least 2x larger than needed
        if Image.MAX_IMAGE_PIXELS and (pixels := img.width * img.height) > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(
                f"Image size ({pixels} pixels, {img.width}x{img.height}) exceeds limit of "
                f"{Image.MAX_IMAGE_PIXELS} pixels"
            )
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in RGB, whatever its mode (L, P, RGBA, CMYK, 16-bit greyscale scaled to 8 bits, not clipped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def presize(img: Image.Image, size: int, position: tuple[float, float]) -> Image.Image:
    """Largest centred-at-``position`` square crop, resized to ``size`` x ``size`` (fastai ``Resize``)."""
    w, h = img.size
    side = min(w, h)
    left, top = int(position[0] * (w - side)), int(position[1] * (h - side))  # floor, like fastai's Resize
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

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int] | None:
        """Image and label at index ``key`` or ``(index, seed)``; a train crop is drawn with ``seed`` if given."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if self.train and seed is None:  # an index alone: the position comes from the global RNG stream
            seed = draw_seed()
        got = self.views(i, [seed if self.train else None])
        return None if got is None else (got[0][0], got[1])

    def views(self, i: int, crop_seeds: Sequence[int | None]) -> tuple[Tensor, int] | None:
        """Image ``i`` decoded once, one square crop per seed (``None``: the centre): (uint8 (k, 3, P, P), label).

        ``None`` instead for an unreadable image when ``skip_bad_images`` is set.
        """
        path, label = self.items[i]
        try:
            img = open_rgb(path, self.presize)
        except DECODE_ERRORS as e:
            if not self.skip_bad_images:
                raise decode_error(path, e) from e
            self.skipped += 1
            log.warning("skipping unreadable image %s (%s); %d skipped so far in this process", path, e, self.skipped)
            return None
        crops = [pil_to_tensor(presize(img, self.presize, crop_position(seed))) for seed in crop_seeds]
        return torch.stack(crops), label


def draw_seed() -> int:
    """A crop seed from the global RNG stream (for a training sample asked for by index alone)."""
    return int(torch.randint(2**62, ()))


def crop_position(seed: int | None) -> tuple[float, float]:
    """Where a square crop sits along each axis, in [0, 1]: drawn from ``seed``, or the centre for ``None``."""
    return (0.5, 0.5) if seed is None else tuple(torch.rand(2, generator=seeds.generator(seed)).tolist())


def content_key(image: Tensor) -> int:
    """A key from a uint8 image's pixels (CRC-32): seeds an image's TTA draws, whatever batch it arrives in."""
    return zlib.crc32(image.contiguous().numpy().tobytes())


def keyed_crops(img: Image.Image, size: int, n: int, seed: int) -> Tensor:
    """uint8 (1 + n, 3, size, size): the centre crop, then ``n`` crops at positions drawn from (``seed``, the centre
    crop's ``content_key``, view) - ``CropViews`` for an image that has no dataset index (a user's photo)."""
    centre = pil_to_tensor(presize(img, size, (0.5, 0.5)))
    key = content_key(centre)
    positions = [crop_position(seeds.derive(seed, seeds.TTA_CROP, key, view)) for view in range(n)]
    return torch.stack([centre, *(pil_to_tensor(presize(img, size, at)) for at in positions)])


class CropViews(Dataset):
    """``dataset``'s images as (uint8 (1 + n, 3, P, P), label): the centre crop, then ``n`` crops whose positions
    are drawn from (``seed``, index, view) - fastai's ``tta`` re-draws the presize crop in every augmented pass.

    Seeded per sample and view, the crops do not depend on batching, workers or the DDP rank.
    """

    def __init__(self, dataset: PresizedImages | Dataset, n: int, seed: int) -> None:
        self.dataset, self.n, self.seed = dataset, n, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        crop_seeds = [None] + [seeds.derive(self.seed, seeds.TTA_CROP, i, view) for view in range(self.n)]
        return self.dataset.views(i, crop_seeds)


def collate_skipping(batch: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor]:
    """default_collate over the items that decoded (``None`` marks a skipped bad image)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        raise BadImageError(f"all {len(batch)} images of a batch failed to decode (see the warnings above)")
    return default_collate(kept)


class SeededSampler(DistributedSampler):
    """DistributedSampler of ``(index, seed)`` pairs: a sample's random crop is a function of (seed, epoch, index)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((i, seeds.derive(self.seed, seeds.CROP, epoch, i)) for i in super().__iter__())


def first_batch(dataset: Dataset, batch_size: int, world: int, rank: int) -> Tensor:
    """The uint8 images of the first training batch on ``rank`` in epoch 0: the samples and crops it will draw."""
    sampler = SeededSampler(dataset, world, rank, shuffle=True, seed=seeds.run_seed())
    return collate_skipping([dataset[key] for key in itertools.islice(sampler, batch_size)])[0]
