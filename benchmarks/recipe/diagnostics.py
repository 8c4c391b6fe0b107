"""Diagnostics: fastai's resampling with our prefilter, ours with fastai's one crop per batch (each while inside)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from imagenette_sota.data import augment as aug


@contextlib.contextmanager
def area_prefilter() -> Iterator[None]:
    """fastai's batch resampling with this suite's prefilter, while inside.

    fastai's ``_grid_sample`` area-resizes a big shrink to twice the output, then samples it 2x with bilinear
    (``align_corners=True``): aliased. Ours area-averages by the integer factor that leaves the shrink in [1, 2)
    (``augment.prepool_factors``), here from the batch's sampled span as fastai measures it. A diagnostic: it swaps
    a step where the two pipelines' pixels differ by design, to see what the difference is worth.
    """
    import fastai.vision.augment as fa

    original = fa._grid_sample

    def grid_sample(x, coords, mode="bilinear", padding_mode="reflection", align_corners=None):
        if mode == "bilinear":
            x = aug.area_average(x, int(_shrink(x, coords, align_corners)))
        return F.grid_sample(x, coords, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    fa._grid_sample = grid_sample
    try:
        yield
    finally:
        fa._grid_sample = original


def _shrink(x: torch.Tensor, coords: torch.Tensor, align_corners: bool | None) -> float:
    """Input pixels per output pixel of a grid_sample, the smaller axis's, from the batch's sampled span (as fastai
    estimates its zoom: min and max over the batch)."""
    steps = []
    for axis, (n_in, n_out) in enumerate(((x.shape[-1], coords.shape[-2]), (x.shape[-2], coords.shape[-3]))):
        span = (coords[..., axis].max() - coords[..., axis].min()).item()  # between the outer output pixels' centres
        steps.append(span * ((n_in - 1) / 2 if align_corners else n_in / 2) / max(n_out - 1, 1))
    return min(steps)


@contextlib.contextmanager
def shared_crop() -> Iterator[None]:
    """Ours' augmentation with one random crop for the whole batch, as fastai's ``RandomResizedCropGPU`` draws it,
    while inside; flip, rotation, zoom, warp and lighting stay per sample. A diagnostic, like ``area_prefilter``."""
    original = aug.Augment.matrices

    def matrices(self, n: int, device="cpu", generator=None) -> torch.Tensor:
        rest = original(dataclasses.replace(self, min_scale=1.0, ratio=(1.0, 1.0)), n, device, generator)
        crop = original(dataclasses.replace(self, flip_p=0.0, p_affine=0.0), 1, device, generator)  # the crop alone
        return crop.expand(n, 3, 3) @ rest

    aug.Augment.matrices = matrices
    try:
        yield
    finally:
        aug.Augment.matrices = original
