"""ImagenetteDataModule: download, verify, extract, presize on the CPU, augment whole batches on the device."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from imagenette_sota import seeds
from imagenette_sota.data import augment as aug
from imagenette_sota.data.cache import CachedImages
from imagenette_sota.data.cache import build as build_cache
from imagenette_sota.data.catalog import RELEASES, class_names, human_names, release
from imagenette_sota.data.dataset import (
    NOISY_LEVELS,
    CropViews,
    PresizedImages,
    SeededSampler,
    collate_skipping,
    relabel,
)
from imagenette_sota.data.defaults import check_sizes, decide_cache, loader_workers
from imagenette_sota.data.download import archive_stem, fetch
from imagenette_sota.data.folders import Items, Layout, class_folders, find_layout
from imagenette_sota.data.normalization import Mode, Normalization
from imagenette_sota.data.split import How, Split
from imagenette_sota.data.transforms import BatchTransforms

log = logging.getLogger(__name__)


class ImagenetteDataModule(BatchTransforms, L.LightningDataModule):
    """Imagenette / Imagewoof with CPU presizing and one-resample batch augmentation on the accelerator.

    ``train_size``, ``val_size`` and ``batch_size`` are public and may change between epochs (progressive
    resizing sets them); a new ``batch_size`` takes effect when the train loader is rebuilt.
    """

    def __init__(
        self,
        dataset: str = "imagenette2-160",
        root: str | Path = "data",
        url: str | None = None,
        md5: str | None = None,
        presize: int = 160,
        train_size: int = 128,
        val_size: int | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        noisy_labels: Literal[0, 1, 5, 25, 50] = 0,
        augment: aug.Augment | None = aug.Augment(),
        normalize: Mode = "imagenet",
        skip_bad_images: bool = False,
        cache: bool | None = None,
        split: How = "folders",
        valid_pct: float = 0.2,
        split_seed: int = 42,
    ) -> None:
        """Args:
        dataset: official release (imagenette2, imagenette2-320, imagenette2-160, imagewoof2[-320|-160]).
        root: folder that holds the extracted release, or is itself a dataset: train/ and val/ with one
            sub-folder per class, or one sub-folder per class and no split (validation: a random valid_pct).
        url: another source for the archive: an http(s) URL or a local .tgz path (an offline mirror).
        md5: checksum of the archive at ``url``; the official checksum is used when ``url`` is not given.
        presize: square side (px) each image is cropped and resized to on the CPU (fastai ``Resize``).
        train_size: side (px) of augmented training images. val_size: of validation images (None: train_size).
        batch_size: training batch per device. val_batch_size: per device (None: 2 x batch_size, no grads).
        num_workers: DataLoader processes (None: every core for an accelerator; on the CPU 0 with the cache, else 1:
            data.defaults.default_workers).
        noisy_labels: train on Imagenette's noisy labels with this percentage of wrong labels.
        augment: training augmentation (None: train images are only resized, like validation).
        normalize: ImageNet statistics, statistics of the first training batch, or none.
        skip_bad_images: skip undecodable images with a warning instead of stopping with an error.
        cache: decode every image once into a memory-mapped presized cache under the dataset folder
            (``.presized/``); later epochs and runs decode nothing (see imagenette_sota.data.cache). None: on when
            it takes at most half the free disk and memory (data.defaults.cache_fits; the decision is logged).
        split: "folders": validate on val/ (a root of class folders alone is split at random); "random": pool
            every image and hold out a random valid_pct (the book's Imagenette split).
        valid_pct: fraction of the images held out by a random split (fastai RandomSplitter(valid_pct, seed)).
        split_seed: seed of the random split, apart from the run's seed: the same split whatever the run.
        """
        super().__init__()
        check_sizes(
            presize=presize,
            train_size=train_size,
            val_size=val_size,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
        )
        if noisy_labels not in NOISY_LEVELS:
            raise ValueError(f"noisy_labels={noisy_labels!r}: choose one of {NOISY_LEVELS} (percent of noisy labels)")
        self.splitter = Split(split, valid_pct, split_seed)  # validates them; the split drawn is checkpointed
        if noisy_labels and split == "random":
            raise ValueError(f"noisy_labels={noisy_labels} follows the official split: use split='folders'")
        if (size := max(train_size, val_size or 0)) > presize:
            log.warning("images are presized to %d px, then upsampled to %d px: set presize >= %d", presize, size, size)
        self.dataset, self.root, self.url, self.md5 = dataset, Path(root), url, md5
        self.release = release(dataset)
        self.presize, self.train_size, self.val_size = presize, train_size, val_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers  # None: default_workers, once the cache decision is known
        self.noisy_labels, self.augment, self.normalize = noisy_labels, augment, normalize
        self.skip_bad_images, self.cache = skip_bad_images, cache
        self._cache_decided: bool | None = None  # what cache=None came to (rank 0's under DDP)
        self._scanned: tuple[Items, Items] | None = None  # prepare_data's split, for the setup that follows
        _ = self.layout  # refuse a root laid out in a way we cannot read now, before anything is downloaded
        self.normalization = Normalization(normalize)  # validates ``normalize``; fit state is checkpointed
        self.train_set: PresizedImages | CachedImages | None = None
        self.val_set: PresizedImages | CachedImages | None = None

    # --- where the data is -------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The archive's URL or local path."""
        return self.url or self.release.url

    @property
    def layout(self) -> Layout | None:
        """How ``root`` holds the images: "split" (train/, val/), "classes" (no split) or None (to download)."""
        return find_layout(self.root, {*RELEASES, *([archive_stem(self.url)] if self.url else [])})

    @property
    def data_dir(self) -> Path:
        """The dataset folder: ``root`` itself, or the release extracted under it (holding train/ and val/)."""
        return self.root if self.layout else self.root / archive_stem(self.source)

    @property
    def classes(self) -> list[str]:
        """Class folder names, sorted: from the folders once there, else the release's wnids."""
        folder = self.data_dir if self.layout == "classes" else self.data_dir / "train"
        return class_folders(folder) if folder.is_dir() else list(class_names(self.dataset))

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names in label order: the folder names, or the official releases' names."""
        return human_names(self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes, derived from the folders (or the release before download)."""
        return len(self.classes)

    def prepare_data(self) -> None:
        """Download, verify and extract once (rank 0), and fill the presized cache if asked."""
        if not self.data_dir.is_dir():
            fetch(self.source, self.root, self.release.checks() if self.url is None else {"md5": self.md5})
        if self.cache is not False:
            splits = self._scanned = self.splitter(self.data_dir, self.layout or "split", self.classes)
            if self.use_cache(sum(map(len, splits))):
                for split, items in zip(("train", "val"), splits, strict=True):
                    self._cached_pixels(split, items)

    def use_cache(self, images: int, agree: bool = False) -> bool:
        """``cache``, or with None whether ``images`` presized fit comfortably (``agree``: rank 0 decides for all)."""
        if self.cache is not None:
            return self.cache
        if self._cache_decided is None:
            self._cache_decided = decide_cache(images, self.presize, self.data_dir)
        if agree and self.trainer is not None and self.trainer.world_size > 1:
            self._cache_decided = self.trainer.strategy.broadcast(self._cache_decided, src=0)
        return self._cache_decided

    def _cached_pixels(self, split: str, items: Items) -> Path:
        workers = (os.cpu_count() or 1) if self.num_workers is None else self.num_workers  # the build: every core
        folder = self.data_dir / ".presized" / split
        return build_cache(items, self.presize, folder, num_workers=workers, skip_bad=self.skip_bad_images)

    # --- datasets and loaders ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Index the images, split them (and read the noisy labels if asked)."""
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"{self.data_dir} does not exist: call prepare_data() (the Trainer does) or point root at it"
            )
        self._build()
        if self.trainer is not None and self.trainer.world_size > 1:
            self.splitter.check_ranks_agree(self.trainer.strategy.broadcast, self.trainer.global_rank, self.data_dir)
        if stage == "fit":
            self.fit_normalization()  # "batch" statistics before the sanity check validates with them

    def _build(self) -> None:
        # The scan prepare_data just made in this process (its skipped-files warning once), else a new one.
        train_items, val_items = self._scanned or self.splitter(self.data_dir, self.layout or "split", self.classes)
        self._scanned = None
        if self.noisy_labels:
            train_items = relabel(train_items, self.data_dir, self.classes, self.noisy_labels)
        cached = self.use_cache(len(train_items) + len(val_items), agree=True)
        self.train_set = self._images("train", train_items, cached)
        self.val_set = self._images("val", val_items, cached)
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is more than the {len(self.train_set)} training images (the last "
                "partial batch is dropped, so an epoch would be empty): use a smaller batch_size"
            )

    def _images(self, split: str, items: Items, cached: bool) -> PresizedImages | CachedImages:
        if cached:
            return CachedImages(self._cached_pixels(split, items), items, train=split == "train")
        return PresizedImages(items, self.presize, train=split == "train", skip_bad_images=self.skip_bad_images)

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler: Sampler | None = None
        if train:
            # The shuffle and the crops are functions of the seed and the epoch (Lightning calls set_epoch), so a
            # resumed run sees what an uninterrupted one did. Lightning keeps a DistributedSampler as is.
            sampler = SeededSampler(dataset, world, rank, shuffle=True, seed=seeds.run_seed())
        elif world > 1:
            # Lightning's default DistributedSampler would repeat samples to even out the ranks, skewing the metrics.
            sampler = UnrepeatedDistributedSampler(dataset, world, rank, shuffle=False)
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)  # None: no Trainer yet
        workers = loader_workers(self.num_workers, isinstance(self.train_set, CachedImages), device)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            collate_fn=collate_skipping,
            pin_memory=device.type == "cuda" if device is not None else torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    @property
    def eval_batch_size(self) -> int:
        """Batch per device for validation, test and predict: ``val_batch_size``, or 2 x ``batch_size`` (no grads)."""
        return self.val_batch_size or 2 * self.batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled uint8 batches of ``batch_size`` (the last partial batch is dropped)."""
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        """Centre-presized uint8 validation batches, in dataset order; under DDP each rank a share, none repeated."""
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """The official val split (Imagenette has no separate test labels)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The val split, for predictions and test-time augmentation."""
        return self.val_dataloader()

    def tta_dataloader(self, n: int, seed: int = 0) -> DataLoader:
        """The val split as uint8 (B, 1 + n, 3, P, P): the centre crop, then n crops at seeded positions (TTA)."""
        if self.val_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return self._loader(CropViews(self.val_set, n, seed), self.eval_batch_size, train=False)

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run restores (sizes, batch size, statistics, split, classes); inference reads it too."""
        return {
            "split": self.splitter.state_dict(),
            "classes": self.classes,
            "class_names": self.class_names,
            "presize": self.presize,
            "normalize": self.normalize,
            "augment": None if self.augment is None else dataclasses.asdict(self.augment),
            "train_size": self.train_size,
            "val_size": self.val_size,
            "batch_size": self.batch_size,
            **self.normalization.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.train_size, self.val_size, self.batch_size = (state[k] for k in ("train_size", "val_size", "batch_size"))
        self.normalization.load_state_dict(state)
        if state.get("split") is not None:  # checkpoints from before the split was recorded have none
            self.splitter.load_state_dict(state["split"], self.layout)
            if self.train_set is not None:  # already set up (Lightning restores after setup): split again
                self._build()
