"""AtomicCheckpointIO: a checkpoint file is either the previous complete one or the new complete one, never partial.

Lightning's ``TorchCheckpointIO`` (2.6) saves through an fsspec transaction: the bytes go to a temporary file made by
``tempfile.mkstemp()`` in the system temporary folder, which is then moved onto the target. When that folder is on
another filesystem (a tmpfs ``/tmp``, a container's overlay) the move is a copy into the target, so a kill during it
leaves a truncated checkpoint under the real name (and the temporary file behind in ``/tmp``); nothing is fsynced.
Here the bytes go to a hidden ``.<name>.partial`` beside the target, are flushed and fsynced, and ``os.replace``
renames it onto the target (atomic within one filesystem), then the folder is fsynced so that the rename itself
survives a power loss. A leftover ``.partial`` never matches ``*.ckpt``, so neither ``ckpt_path="last"`` nor a
glob picks it up, and the next save of the same checkpoint overwrites it. Remote paths (``s3://`` and the like) go
to Lightning's own transaction.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from imagenette_sota.atomic import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes beside the target, fsyncs, and renames: a kill never leaves a partial file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` to ``path`` atomically."""
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options: save without them")
        with replacing(Path(str(path).removeprefix("file://")), keep_suffix=False) as tmp:
            torch.save(checkpoint, tmp)


# torch.save's legacy (pre-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def not_a_checkpoint(path: str | Path) -> str | None:
    """Why the local file ``path`` cannot be a checkpoint (it does not exist, is a folder, is not in torch.save's
    format), in words that follow its name; None when it may be one. Reads its first bytes only: nothing runs."""
    file = Path(path)
    if not file.exists():
        return "does not exist"
    if file.is_dir():
        return "is a folder"
    with open(file, "rb") as f:
        head = f.read(len(_LEGACY_HEAD))
    if not zipfile.is_zipfile(file) and head != _LEGACY_HEAD:
        return f"is not a checkpoint (torch.save's format; this file starts with {head[:12]!r}, or is truncated)"
    return None


def check_ckpt_path(path: str | Path | None) -> None:
    """Refuse a local ``ckpt_path`` that does not exist or is not a checkpoint, before anything runs.

    Lightning's names (``last``, ``best``, ``hpc``, ``registry...``) and remote URLs are left to Lightning.
    """
    if path is None:
        return
    text = str(path)
    if text in ("last", "best", "hpc") or text.startswith("registry") or "://" in text.replace("file://", ""):
        return
    if problem := not_a_checkpoint(text.removeprefix("file://")):
        error = FileNotFoundError if problem == "does not exist" else ValueError
        raise error(f"ckpt_path={text} {problem}: give the .ckpt file a fit wrote (<run>/checkpoints/*.ckpt) or 'last'")
