"""Which images train and which validate: the val/ folder, or fastai's seeded random split, recorded for resuming."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from imagenette_sota.data.folders import Items, Layout, log_skipped, scan_classes, scan_split

log = logging.getLogger(__name__)

How = Literal["folders", "random"]


def random_split(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) indices of ``n`` items: fastai's ``RandomSplitter(valid_pct, seed)``, exactly.

    A function of (n, valid_pct, seed) alone: a private generator, so the same on every run, machine, number of
    workers and DDP rank, whatever the global RNG state.
    """
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct={valid_pct!r} must be in (0, 1): the fraction of images held out for validation")
    cut = int(valid_pct * n)  # < n, as valid_pct < 1
    if cut == 0:
        raise ValueError(f"valid_pct={valid_pct} of {n} image(s) holds out no image: raise valid_pct or add images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[cut:], perm[:cut]


def file_digest(items: Sequence[tuple[Path, int]], root: Path) -> str:
    """sha1 of the (path relative to ``root``, label) list: which files a split was drawn from, in order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for path, label in items:
        digest.update(f"{path.relative_to(root).as_posix()}\0{label}\n".encode())
    return digest.hexdigest()


class Split:
    """How a data module splits its images (``how``, ``valid_pct``, ``seed``), and a record of the split it drew.

    The record (how, fraction, seed, number of files and a digest of the file list) goes into checkpoints. A loaded
    record replaces the configured settings, so a resumed fit and ``validate`` hold out the images the checkpoint's
    fit did; its digest must then match the files found.
    """

    def __init__(self, how: How = "folders", valid_pct: float = 0.2, seed: int = 42) -> None:
        if how not in ("folders", "random"):
            raise ValueError(f"split={how!r}: choose 'folders' (val/ when there is one) or 'random' (valid_pct)")
        if isinstance(valid_pct, bool) or not isinstance(valid_pct, (int, float)) or not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct={valid_pct!r} must be in (0, 1): the fraction held out for validation")
        self.how, self.valid_pct, self.seed = how, valid_pct, seed
        self.record: dict[str, Any] | None = None  # of the split last drawn
        self._expected: dict[str, Any] | None = None  # a loaded checkpoint's record, to be matched

    def __call__(self, data_dir: Path, layout: Layout, classes: Sequence[str]) -> tuple[Items, Items]:
        """Training and validation (path, label) lists of the images under ``data_dir``."""
        if layout == "classes":
            pooled, skipped = scan_classes(data_dir, classes)
            log_skipped(data_dir, skipped)
        else:
            train, val = scan_split(data_dir / "train", classes), scan_split(data_dir / "val", classes)
            if self.how == "folders":
                self.record = {
                    "split": "folders",
                    "files": len(train) + len(val),
                    "digest": file_digest(train + val, data_dir),
                }
                return train, val
            pooled = train + val
        record = {
            "split": "random",
            "valid_pct": self.valid_pct,
            "seed": self.seed,
            "files": len(pooled),
            "digest": file_digest(pooled, data_dir),
        }
        if (expected := self._expected) is not None and expected["digest"] != record["digest"]:
            raise ValueError(
                f"root={data_dir}: the {len(pooled)} images there are not the {expected['files']} the checkpoint's "
                f"random split was drawn from (file-list digest {record['digest'][:12]}, recorded "
                f"{expected['digest'][:12]}): point root at the images the checkpoint was trained on"
            )
        train_idx, val_idx = random_split(len(pooled), self.valid_pct, self.seed)
        self.record = record
        return [pooled[i] for i in train_idx], [pooled[i] for i in val_idx]

    def state_dict(self) -> dict[str, Any] | None:
        """The record of the split last drawn (None before one is)."""
        return self.record

    def load_state_dict(self, recorded: dict[str, Any], layout: Layout | None) -> None:
        """Use a checkpoint's split from now on, saying so when it differs from the configured one."""
        was = (recorded["split"], recorded.get("valid_pct", self.valid_pct), recorded.get("seed", self.seed))
        now = ("random" if layout == "classes" else self.how, self.valid_pct, self.seed)  # class folders: random
        if was != now:
            log.warning(
                "the checkpoint was trained with split=%s, valid_pct=%s, split_seed=%s: using those instead of "
                "split=%s, valid_pct=%s, split_seed=%s",
                *was,
                *now,
            )
        self.how, self.valid_pct, self.seed = was
        self._expected = recorded if recorded["split"] == "random" else None

    def check_ranks_agree(self, broadcast: Callable[[str, int], str], rank: int, data_dir: Path) -> None:
        """Refuse a rank whose file list differs from rank 0's (each rank splits alone; another node's copy?)."""
        digest = self.record["digest"]
        if broadcast(digest, 0) != digest:
            raise ValueError(
                f"root={data_dir}: rank {rank} sees other files than rank 0: give every node the same copy of the data"
            )
