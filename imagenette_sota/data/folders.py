"""Image folders: which files are images, how a data root is laid out, and fastai's seeded random split."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

# What PIL decodes for us; the extension is matched in any case (.JPG, .Png). GIF/TIFF/WebP: the first frame.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

Layout = Literal["split", "classes"]
Items = list[tuple[Path, int]]


def is_hidden(path: Path) -> bool:
    """A dot file or folder (``.DS_Store``, macOS ``._x.JPEG`` forks, ``.ipynb_checkpoints``, our ``.presized``)."""
    return path.name.startswith(".")


def is_image(path: Path) -> bool:
    """An image by name: a known extension in any case, and not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path)


def class_folders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder``, sorted (by code point: the same on every machine)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def _holds_images(folder: Path) -> bool:
    return any(is_image(p) and p.is_file() for p in folder.iterdir())


def find_layout(root: Path, releases: Collection[str] = ()) -> Layout | None:
    """How ``root`` holds images: ``train/`` + ``val/`` ("split"), one folder per class ("classes"), or None.

    None: nothing there yet (a missing or empty root) or release folders (named in ``releases``), so a release is
    used or downloaded there. A root with ``train/`` but no ``val/`` (or the reverse), or with folders that hold no
    images and no release folder, is refused: downloading into it would not be what was meant.
    """
    if not root.is_dir():
        return None
    names = class_folders(root)
    if "train" in names and "val" in names:
        return "split"
    if "train" in names or "val" in names:
        have, lack = ("train", "val") if "train" in names else ("val", "train")
        raise ValueError(
            f"root={root} has {have}/ but no {lack}/: add {root / lack}/ with the same class folders, or point root "
            f"at {root / have} to use its class folders with a random validation split (valid_pct)"
        )
    others = [name for name in names if name not in releases]
    if any(_holds_images(root / name) for name in others):
        return "classes"
    if others and not set(names) & set(releases):  # beside a release folder they are the user's business
        shown = ", ".join(f"{n}/" for n in others[:3])
        raise ValueError(
            f"root={root} holds folders ({shown}) but no images directly inside them: point root at a folder "
            "with train/ and val/, or at one whose sub-folders are the classes (image files directly inside), "
            "or at an empty or new folder to download the dataset into"
        )
    return None


def scan_classes(folder: Path, classes: Sequence[str]) -> tuple[Items, list[Path]]:
    """(path, label) of every image in ``folder/<class>/``, sorted by class then name; and the skipped files."""
    items: Items = []
    skipped = sorted(p for p in folder.iterdir() if not p.is_dir())
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if not p.is_dir())
        images = [p for p in files if is_image(p)]
        skipped += [p for p in files if not is_image(p)]
        if not images:
            raise FileNotFoundError(f"{folder / name} holds no images: add images or remove the folder")
        items += [(p, label) for p in images]
    return items, skipped


def log_skipped(folder: Path, skipped: Sequence[Path]) -> None:
    """One warning for the hidden and non-image files of ``folder``: their count and a few names."""
    if skipped:
        log.warning(
            "%s: skipped %d file(s) that are hidden or not %s images (e.g. %s)",
            folder,
            len(skipped),
            "/".join(IMAGE_EXTENSIONS),
            ", ".join(p.relative_to(folder).as_posix() for p in skipped[:3]),
        )


def scan_split(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(path, label) for every image under ``split_dir/<class>/``, sorted; hidden and non-image files are skipped."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist: the dataset folder needs train/ and val/ subfolders")
    found = class_folders(split_dir)
    if missing := sorted(set(classes) - set(found)):
        raise FileNotFoundError(f"{split_dir} lacks class folder(s) {missing}: every split needs every class")
    if extra := sorted(set(found) - set(classes)):
        raise ValueError(
            f"{split_dir} has class folder(s) {extra} that the training split does not have: add them to train/ "
            "or remove them"
        )
    items, skipped = scan_classes(split_dir, classes)
    log_skipped(split_dir, skipped)
    return items
