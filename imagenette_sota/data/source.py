"""Where a data module's images come from: an official release or the user's folders, split, labelled, and read
from the files or from the decode-once cache.

It knows no Trainer: where DDP ranks must agree (the cache decision), the data module passes its ``broadcast``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagenette_sota.data.cache import CachedImages
from imagenette_sota.data.cache import build as build_cache
from imagenette_sota.data.catalog import RELEASES, class_names, human_names, release
from imagenette_sota.data.dataset import NOISY_LEVELS, PresizedImages, relabel
from imagenette_sota.data.defaults import decide_cache
from imagenette_sota.data.download import archive_stem, fetch
from imagenette_sota.data.folders import Items, Layout, class_folders, find_layout
from imagenette_sota.data.split import How, Split

ImageDataset = PresizedImages | CachedImages
Broadcast = Callable[[Any, int], Any]  # (value, source rank) -> the source rank's value, on every rank


class ImageSource:
    """The images of one dataset: where they are (fetched once if need be), which train and which validate, their
    labels, whether they are read from the cache, and what an undecodable image does.

    ``prepare`` fetches and fills the cache (once, rank 0); ``datasets`` gives (train, val); ``state_dict`` records
    the split drawn and the classes for checkpoints.
    """

    def __init__(
        self,
        dataset: str = "imagenette2-160",
        root: str | Path = "data",
        url: str | None = None,
        md5: str | None = None,
        noisy_labels: int = 0,
        skip_bad_images: bool = False,
        cache: bool | None = None,
        split: How = "folders",
        valid_pct: float = 0.2,
        split_seed: int = 42,
    ) -> None:
        """Args: as ``ImagenetteDataModule``'s of the same names."""
        if noisy_labels not in NOISY_LEVELS:
            raise ValueError(f"noisy_labels={noisy_labels!r}: choose one of {NOISY_LEVELS} (percent of noisy labels)")
        self.splitter = Split(split, valid_pct, split_seed)  # validates them; the split drawn is checkpointed
        if noisy_labels and split == "random":
            raise ValueError(f"noisy_labels={noisy_labels} follows the official split: use split='folders'")
        self.dataset, self.release, self.root, self.url, self.md5 = dataset, release(dataset), Path(root), url, md5
        self.noisy_labels, self.skip_bad_images = noisy_labels, skip_bad_images
        self.cache = cache  # the setting, then the decision: None until decided from the sizes (rank 0's under DDP)
        self._scan: tuple[Path, tuple[Items, Items]] | None = None  # (data_dir, its split): each folder scanned once
        _ = self.layout  # refuse a root laid out in a way we cannot read now, before anything is downloaded

    @property
    def archive(self) -> str:
        """The archive's URL or local path."""
        return self.url or self.release.url

    @property
    def layout(self) -> Layout | None:
        """How ``root`` holds the images: "split" (train/, val/), "classes" (no split) or None (to download)."""
        return find_layout(self.root, {*RELEASES, *([archive_stem(self.url)] if self.url else [])})

    @property
    def data_dir(self) -> Path:
        """The dataset folder: ``root`` itself, or the release extracted under it (holding train/ and val/)."""
        return self.root if self.layout else self.root / archive_stem(self.archive)

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

    def prepare(self, presize: int, workers: int | None = None) -> None:
        """Fetch, verify and extract the archive unless its folder is there; fill the cache at ``presize`` if on."""
        if not self.data_dir.is_dir():
            fetch(self.archive, self.root, self.release.checks() if self.url is None else {"md5": self.md5})
        if self.cache is not False:
            splits = self.items()
            if self.use_cache(sum(map(len, splits)), presize):
                for split, items in zip(("train", "val"), splits, strict=True):
                    self._cache_file(split, items, presize, workers)

    def items(self) -> tuple[Items, Items]:
        """(path, label) lists of the training and validation images by their folders: one scan (and one warning
        about skipped files) per dataset folder, until a checkpoint's split is loaded."""
        if self._scan is None or self._scan[0] != self.data_dir:
            self._scan = (self.data_dir, self.splitter(self.data_dir, self.layout or "split", self.classes))
        return self._scan[1]

    def use_cache(self, images: int, presize: int, broadcast: Broadcast | None = None) -> bool:
        """Whether the datasets read the cache: the setting, or whether ``images`` at ``presize`` fit comfortably
        (decided once); with ``broadcast``, rank 0's decision for every rank."""
        if self.cache is None:
            self.cache = decide_cache(images, presize, self.data_dir)
        if broadcast is not None:
            self.cache = broadcast(self.cache, 0)
        return self.cache

    def datasets(
        self, presize: int, workers: int | None = None, broadcast: Broadcast | None = None
    ) -> tuple[ImageDataset, ImageDataset]:
        """(train, val) datasets of uint8 images at ``presize``, with the noisy training labels if asked; ``workers``:
        processes that build a missing cache (None: every core); ``broadcast``: see ``use_cache``."""
        train, val = self.items()
        if self.noisy_labels:
            train = relabel(train, self.data_dir, self.classes, self.noisy_labels)
        cached = self.use_cache(len(train) + len(val), presize, broadcast)
        return (
            self._dataset("train", train, presize, cached, workers),
            self._dataset("val", val, presize, cached, workers),
        )

    def _dataset(self, split: str, items: Items, presize: int, cached: bool, workers: int | None) -> ImageDataset:
        if cached:
            return CachedImages(self._cache_file(split, items, presize, workers), items, train=split == "train")
        return PresizedImages(items, presize, train=split == "train", skip_bad_images=self.skip_bad_images)

    def _cache_file(self, split: str, items: Items, presize: int, workers: int | None) -> Path:
        """The split's cache file under ``.presized/``, built first if missing (every core for the build by default)."""
        workers = (os.cpu_count() or 1) if workers is None else workers
        folder = self.data_dir / ".presized" / split
        return build_cache(items, presize, folder, num_workers=workers, skip_bad=self.skip_bad_images)

    def state_dict(self) -> dict[str, Any]:
        """The split drawn (None before one is) and the classes, ids and names."""
        return {"split": self.splitter.state_dict(), "classes": self.classes, "class_names": self.class_names}

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Use the split ``state`` records, if it records one, from the next scan on; return whether it did."""
        if state.get("split") is None:  # saved before any split was drawn
            return False
        self.splitter.load_state_dict(state["split"], self.layout)
        self._scan = None  # scan again: the recorded split, checked against the files found
        return True
