"""The data module's size checks and machine-dependent defaults: the decode-once cache, loader workers.

Why these rules (measured in docs/results.md): on the CPU the model trains many times slower than even the uncached
loader delivers, so the loader only has to stay out of the training threads' way; on an accelerator the model is far
faster and wants every core.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from imagenette_sota.data.cache import MAX_ASPECT, row_width

SHARE = 0.5  # the cache is "comfortable" in at most this share of the free disk and of the available memory
GIB = 2**30


def check_sizes(**sizes: int | None) -> None:
    """Refuse a size that is not an integer >= 1 (``num_workers``: >= 0); ``None`` means the default."""
    for name, value in sizes.items():
        least, what = (0, "an integer >= 0") if name == "num_workers" else (1, "a positive integer")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name}={value!r} must be {what}")


def cache_bytes(images: int, presize: int, max_aspect: float = MAX_ASPECT) -> int:
    """Bytes of the decode-once cache of ``images`` at ``presize``: rows of 3 x presize x (aspect cap x presize)."""
    return images * 3 * presize * row_width(presize, max_aspect)


def available_memory() -> int | None:
    """Bytes of memory the kernel can hand out now (``MemAvailable``), None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_disk(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def cache_fits(images: int, presize: int, folder: Path) -> tuple[bool, str]:
    """Whether the cache fits comfortably (half the free disk at ``folder`` and half the available memory), and why.

    Memory counts because the cache is memory-mapped: it is fast only while the page cache can hold it.
    """
    need, disk, memory = cache_bytes(images, presize), free_disk(folder), available_memory()
    fits = need <= SHARE * disk and (memory is None or need <= SHARE * memory)
    memory_text = "unknown" if memory is None else f"{memory / GIB:.1f} GiB"
    why = (
        f"{need / GIB:.2f} GiB for {images:,} images at presize {presize} "
        f"(free: {disk / GIB:.1f} GiB disk, {memory_text} memory)"
    )
    return fits, why


def default_workers(cache: bool, accelerated: bool, cores: int | None = None) -> int:
    """Loader processes: every core for an accelerator; on the CPU, 0 with the cache and 1 without.

    On the CPU the training threads use every core: with the cache a batch is a memory-mapped copy (a few % of a
    step, done inline), without it one process decodes many times faster than the model trains and overlaps it.
    """
    cores = cores or os.cpu_count() or 1
    if accelerated:
        return cores
    return 0 if cache or cores < 2 else 1


def predict_workers(files: int, batch_size: int, accelerated: bool, cores: int | None = None) -> int:
    """Processes decoding files for prediction: none on the CPU; on an accelerator one per core (at most 8) from a
    few batches on.

    On the CPU the network's threads use every core and an image decodes in a fraction of its forward pass; worker
    processes beside those threads slow both (docs/results.md).
    """
    if not accelerated or files <= 4 * batch_size:  # starting processes pays off only over a few batches
        return 0
    return min(cores or os.cpu_count() or 1, 8)


def decide_cache(images: int, presize: int, folder: Path) -> bool:
    """cache=None: on when ``cache_fits``; logs the decision, the size, and the setting that overrides it."""
    fits, why = cache_fits(images, presize, folder)
    if fits:
        rank_zero_info(f"decode-once cache on by default: {why}; --data.cache false turns it off")
    else:
        rank_zero_info(f"decode-once cache off: {why} is over half the free disk or memory (--data.cache true)")
    return fits


def loader_workers(num_workers: int | None, cached: bool, device: torch.device | None) -> int:
    """``num_workers``, or None: ``default_workers`` for the loader's device (None: CUDA if available)."""
    if num_workers is not None:
        return num_workers
    accelerated = torch.cuda.is_available() if device is None else device.type != "cpu"
    return default_workers(cached, accelerated)
