"""The tests' own facts: where the real archives are (../shared/data; IMAGENETTE_SHARED_DATA overrides), their md5."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMAGENETTE_SHARED_DATA", REPO.parent / "shared" / "data"))
MINI_ARCHIVE = SHARED_DATA / "imagenette2-160-mini.tgz"  # 20 train + 10 val images per class
PHOTOS_ARCHIVE = SHARED_DATA / "imagenet-samples-fullsize.tgz"  # 10 full-size photos, imagenet-samples/<wnid>/


def md5(path: Path) -> str:
    """The md5 of ``path``, the checksum a download or copy of it must match; a clear error if it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set IMAGENETTE_SHARED_DATA to the folder holding it")
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


MINI_MD5 = md5(MINI_ARCHIVE)
