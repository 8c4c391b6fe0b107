"""The official Imagenette and Imagewoof releases: where they live, how to check them, what the classes are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchvision.datasets import Imagenette

_S3 = "https://s3.amazonaws.com/fast-ai-imageclas/"


@dataclass(frozen=True)
class Release:
    """One official archive: its URL and checksum (full-file md5, or fastai's size + md5 of the first MiB)."""

    url: str
    md5: str | None = None
    size: int | None = None
    head_md5: str | None = None

    def checks(self) -> dict[str, Any]:
        """The checks ``download.verify`` takes for this archive."""
        return {"md5": self.md5, "size": self.size, "head_md5": self.head_md5}


# Imagenette: torchvision already holds the URLs and full-file md5s; use them.
_IMAGENETTE = {
    f"imagenette2{s}": Release(*Imagenette._ARCHIVES[k])
    for s, k in [("", "full"), ("-320", "320px"), ("-160", "160px")]
}
# Imagewoof: torchvision has none; fastai's checks.txt gives the size and the md5 of the first MiB.
_IMAGEWOOF = {
    "imagewoof2": Release(_S3 + "imagewoof2.tgz", size=1343715595, head_md5="2cc1c1e36e20cb6fd24ffb978edcb487"),
    "imagewoof2-320": Release(_S3 + "imagewoof2-320.tgz", size=328387740, head_md5="7a1fd92672a559a85de76e4810a20c21"),
    "imagewoof2-160": Release(_S3 + "imagewoof2-160.tgz", size=92612825, head_md5="3559b194123981a540b87132dbda412f"),
}
RELEASES: dict[str, Release] = {**_IMAGENETTE, **_IMAGEWOOF}

_IMAGENETTE_NAMES = {wnid: names[0] for wnid, names in Imagenette._WNID_TO_CLASS.items()}
_IMAGEWOOF_NAMES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


def release(dataset: str) -> Release:
    """The official release named ``dataset``, or a clear error listing the names that exist."""
    if dataset not in RELEASES:
        raise ValueError(f"dataset={dataset!r} is not an official release: choose one of {', '.join(sorted(RELEASES))}")
    return RELEASES[dataset]


def class_names(dataset: str) -> dict[str, str]:
    """wnid -> human-readable name for the family of ``dataset`` (sorted by wnid, the folder order)."""
    names = _IMAGEWOOF_NAMES if release(dataset) in _IMAGEWOOF.values() else _IMAGENETTE_NAMES
    return dict(sorted(names.items()))


def human_names(folders: Sequence[str]) -> list[str]:
    """Readable names for the class folders of an official release (its exact set of wnids), else the folder names."""
    for names in (_IMAGENETTE_NAMES, _IMAGEWOOF_NAMES):
        if set(folders) == names.keys():
            return [names[wnid] for wnid in folders]
    return list(folders)
