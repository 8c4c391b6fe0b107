"""Decoding real JPEGs to presized uint8: the suite's PIL path against torchvision's batched decode_jpeg."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.fast_paths.device import sync


def jpeg_files(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs under ``folder``, sorted and spread evenly over the whole listing (so over every class)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not files:
        raise FileNotFoundError(f"no JPEG files under {folder}")
    stride = max(len(files) // n, 1)
    return files[::stride][:n]


def decode_pil(files: Sequence[Path], presize: int) -> list[Tensor]:
    """The suite's decode: PIL (draft, RGB) -> centre square crop resized to ``presize`` -> uint8 tensor."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    from imagenette_sota.data.dataset import open_rgb
    from imagenette_sota.data.dataset import presize as crop_resize

    return [pil_to_tensor(crop_resize(open_rgb(f, presize), presize, (0.5, 0.5))) for f in files]


def decode_torchvision(files: Sequence[Path], presize: int | None, device: torch.device) -> list[Tensor]:
    """read_file each, decode_jpeg the whole list at once on ``device``, centre crop, resize (bilinear, antialias).

    ``presize=None``: the decoded images as they are (reading and decoding alone).
    """
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    datas = [read_file(str(f)) for f in files]
    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    if presize is None:
        return images
    out = []
    for img in images:
        h, w = img.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = img[:, top : top + side, left : left + side]
        out.append(resize(square, [presize, presize], antialias=True))
    return out


def decode_compare(files: Sequence[Path], presize: int, device: torch.device, repeats: int = 2) -> dict[str, Any]:
    """Images/s of the PIL path and of batched torchvision decoding (the best of ``repeats`` passes each)."""

    def best(fn) -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - start)
        return len(files) / min(seconds)

    decode_torchvision(files[:2], presize, device)  # first call: library and (on CUDA) nvJPEG start-up
    pil_ips = best(lambda: decode_pil(files, presize))
    tv_ips = best(lambda: decode_torchvision(files, presize, device))
    tv_decode_ips = best(lambda: decode_torchvision(files, None, device))
    out = {
        "images": len(files),
        "presize": presize,
        "pil_ips": pil_ips,
        "torchvision_ips": tv_ips,
        "torchvision_decode_only_ips": tv_decode_ips,
        "torchvision_device": str(device),
        "torchvision_vs_pil": tv_ips / pil_ips,
    }
    print(
        f"decode {len(files)} JPEGs to {presize} px: PIL {pil_ips:.0f} images/s, torchvision ({device}) "
        f"{tv_ips:.0f} ({tv_decode_ips:.0f} reading and decoding alone)",
        flush=True,
    )
    return out
