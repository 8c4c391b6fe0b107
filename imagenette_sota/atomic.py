"""Atomic file writes: a file is either absent, the previous complete one or the new complete one, never partial."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(target: str | Path, keep_suffix: bool = True) -> Path:
    """The hidden file beside ``target`` that is written before the rename: ``.<stem>.partial<suffix>``.

    ``keep_suffix=False`` gives ``.<name>.partial``, which no ``*<suffix>`` glob matches (checkpoints: a leftover is
    never taken for one).
    """
    target = Path(target)
    name = f".{target.stem}.partial{target.suffix}" if keep_suffix else f".{target.name}.partial"
    return target.with_name(name)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(target: str | Path, keep_suffix: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``target``; when the block succeeds it is fsynced and renamed onto it.

    A kill leaves at most the temporary file, which the next write of the same target reuses.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(target, keep_suffix)  # the suffix kept by default: some writers check it
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(target.parent)
