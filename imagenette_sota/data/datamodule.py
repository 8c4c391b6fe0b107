"""ImagenetteDataModule: the sizes, loaders and checkpointed state of training on Imagenette-style images.

It delegates where the images come from to an ``ImageSource`` and what happens to a batch on the device to
``BatchTransforms``; the one Lightning piece of the data pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from imagenette_sota import seeds
from imagenette_sota.data import augment as aug
from imagenette_sota.data.cache import CachedImages
from imagenette_sota.data.dataset import CropViews, SeededSampler, collate_skipping, first_batch
from imagenette_sota.data.defaults import check_sizes, loader_workers
from imagenette_sota.data.normalization import Normalization, Statistics
from imagenette_sota.data.source import ImageDataset, ImageSource
from imagenette_sota.data.split import How
from imagenette_sota.data.transforms import BatchTransforms, augment_generator

log = logging.getLogger(__name__)


class ImagenetteDataModule(L.LightningDataModule):
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
        normalize: Statistics = "imagenet",
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
        sizes = dict(presize=presize, train_size=train_size, val_size=val_size, batch_size=batch_size)
        check_sizes(**sizes, val_batch_size=val_batch_size, num_workers=num_workers)
        self.images = ImageSource(
            dataset,
            root,
            url,
            md5,
            noisy_labels=noisy_labels,
            skip_bad_images=skip_bad_images,
            cache=cache,
            split=split,
            valid_pct=valid_pct,
            split_seed=split_seed,
        )
        if (size := max(train_size, val_size or 0)) > presize:
            log.warning("images are presized to %d px, then upsampled to %d px: set presize >= %d", presize, size, size)
        self.presize, self.train_size, self.val_size = presize, train_size, val_size
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.transforms = BatchTransforms(augment, Normalization(normalize))  # normalization state is checkpointed
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self._draws = (-1, 0)  # (optimizer step, training batches augmented at that step so far)

    # --- the image source's facts, read here -------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The data root (``ImageSource.root``)."""
        return self.images.root

    @root.setter
    def root(self, root: str | Path) -> None:
        self.images.root = Path(root)

    @property
    def data_dir(self) -> Path:
        """The dataset folder (``ImageSource.data_dir``)."""
        return self.images.data_dir

    @property
    def classes(self) -> list[str]:
        """Class folder names, sorted."""
        return self.images.classes

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names in label order."""
        return self.images.class_names

    @property
    def num_classes(self) -> int:
        """Number of classes, derived from the folders (or the release before download)."""
        return self.images.num_classes

    @property
    def augment(self) -> aug.Augment | None:
        """Training augmentation (None: resize only)."""
        return self.transforms.augment

    @property
    def normalization(self) -> Normalization:
        """The statistics every batch is normalized with."""
        return self.transforms.normalization

    # --- datasets and loaders ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download, verify and extract once (rank 0), and fill the presized cache if it is on."""
        self.images.prepare(self.presize, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets; under DDP check that every rank holds out rank 0's images."""
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"{self.data_dir} does not exist: call prepare_data() (the Trainer does) or point root at it"
            )
        self._build()
        if self.trainer is not None and self.trainer.world_size > 1:
            self.images.splitter.check_ranks_agree(
                self.trainer.strategy.broadcast, self.trainer.global_rank, self.data_dir
            )
        if stage == "fit":
            self.fit_normalization()  # "batch" statistics before the sanity check validates with them

    def _build(self) -> None:
        distributed = self.trainer is not None and self.trainer.world_size > 1
        broadcast = self.trainer.strategy.broadcast if distributed else None  # rank 0 decides the cache for all
        self.train_set, self.val_set = self.images.datasets(self.presize, self.num_workers, broadcast)
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is more than the {len(self.train_set)} training images (the last "
                "partial batch is dropped, so an epoch would be empty): use a smaller batch_size"
            )

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

    # --- what the network sees ---------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Training batches get ``train_transform`` (seeded by their position in training), others ``val_transform``."""
        x, y = batch
        if self.trainer is None or not self.trainer.training:
            return self.val_transform(x), y
        step = self.trainer.global_step
        self._draws = (step, self._draws[1] + 1 if self._draws[0] == step else 0)  # > 0 only when accumulating
        return self.train_transform(x, augment_generator(self.trainer.global_rank, step, self._draws[1])), y

    def train_transform(self, x: Tensor, generator: aug.Generators = None) -> Tensor:
        """uint8 presized batch -> augmented, normalized float batch at ``train_size`` (``BatchTransforms.train``)."""
        reduce = None if self.trainer is None else partial(self.trainer.strategy.reduce, reduce_op="mean")
        return self.transforms.train(x, self.train_size, generator, reduce)

    def val_transform(self, x: Tensor) -> Tensor:
        """uint8 presized batch -> centre view at ``val_size`` (None: ``train_size``), normalized; no randomness."""
        return self.transforms.val(x, self.val_size or self.train_size)

    def fit_normalization(self) -> None:
        """Fit "batch" statistics now, as fastai's ``Normalize.setups`` does, before any validation uses them.

        From the very batch training starts with (its samples, crops and augmentation at step 0), so the statistics
        are those training would fit, and the sanity check validates with them.
        """
        if self.normalization.fitted or self.trainer is None:
            return
        x = first_batch(self.train_set, self.batch_size, self.trainer.world_size, self.trainer.global_rank)
        self.train_transform(x.to(self.trainer.strategy.root_device), augment_generator(self.trainer.global_rank, 0, 0))

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run restores (sizes, batch size, statistics, split, classes); inference reads it too."""
        return {
            **self.images.state_dict(),
            "presize": self.presize,
            "normalize": self.normalization.statistics,
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
        if self.images.load_state_dict(state) and self.train_set is not None:  # set up already: split again
            self._build()
