"""The way an image travels: catalog -> download -> folders -> split -> source (release or folder, cache) -> dataset
-> transforms (augment + normalization) -> the data module (sizes, loaders, state).

``ImagenetteDataModule`` (``datamodule.py``) is the only Lightning piece; it is imported on first use, so the pure
pieces (``augment``, ``normalization``, ``dataset``) load without Lightning, in DataLoader workers too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagenette_sota.data.datamodule import ImagenetteDataModule

__all__ = ["ImagenetteDataModule"]


def __getattr__(name: str) -> Any:
    """``ImagenetteDataModule``, imported when first asked for."""
    if name == "ImagenetteDataModule":
        from imagenette_sota.data.datamodule import ImagenetteDataModule

        return ImagenetteDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
