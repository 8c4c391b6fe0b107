"""Augment against fastai's aug_transforms, as black boxes: the same distribution of every transform parameter.

Each pipeline transforms marker images - a coordinate image (channel 0 holds each pixel's x, channel 1 its y) for
the geometry and grey levels for the lighting - and the applied transform is recovered from the output alone: a
homography fitted to the sampled coordinates gives crop side, aspect, flip, rotation, zoom and perspective warp;
three grey levels give brightness and contrast. The distributions over 1,000 draws are compared with a two-sample
Kolmogorov-Smirnov test, which a deliberate change of one default (rotation 10 -> 20 degrees) must fail.

The stages are measured apart, each pipeline configured from its own defaults: fastai draws one crop box per batch
(so its crop is drawn one image at a time) and composes the crop after the affine transforms, while Augment draws
everything per sample and crops first (the local scale, angle and flip do not depend on that order).
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandomResizedCropGPU, aug_transforms
from fasttransform import Pipeline
from scipy.stats import ks_2samp
from torch import Tensor

from imagenette_sota.data.augment import Augment

N = 1000  # draws per pipeline and stage
ALPHA = 1e-3  # KS: p-values below this mean "different distributions"; at N=1000 that is D > ~0.087
DEFAULT = Augment()
pytestmark = pytest.mark.usefixtures("one_thread")


def coordinate_image(n: int, side: int) -> Tensor:
    """(n, 3, side, side): channel 0 = x, channel 1 = y of each pixel centre in [0, 1], channel 2 = 0.5."""
    c = (torch.arange(side) + 0.5) / side
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs, ys, torch.full_like(xs, 0.5)]).expand(n, 3, side, side).contiguous()


def fit_homographies(out: Tensor) -> Tensor:
    """(n, 3, 3) maps from output to input coordinates (both in [-1, 1]), fitted to the central half of the output.

    Bilinear sampling of a linear ramp is exact, and the central half never reaches the reflected border.
    """
    n, _, h, w = out.shape
    rows = torch.linspace(h * 0.25, h * 0.75 - 1, 8).round().long()
    cols = torch.linspace(w * 0.25, w * 0.75 - 1, 8).round().long()
    qy, qx = torch.meshgrid((rows + 0.5) * 2 / h - 1, (cols + 0.5) * 2 / w - 1, indexing="ij")
    qx, qy = qx.reshape(-1).double(), qy.reshape(-1).double()  # (64,) output points
    px = out[:, 0][:, rows][:, :, cols].reshape(n, -1).double() * 2 - 1  # (n, 64) input points they sampled
    py = out[:, 1][:, rows][:, :, cols].reshape(n, -1).double() * 2 - 1
    one, zero = torch.ones_like(qx).expand(n, -1), torch.zeros_like(qx).expand(n, -1)
    qxn, qyn = qx.expand(n, -1), qy.expand(n, -1)
    eq_x = torch.stack([qxn, qyn, one, zero, zero, zero, -px * qxn, -px * qyn], -1)  # (n, 64, 8)
    eq_y = torch.stack([zero, zero, zero, qxn, qyn, one, -py * qxn, -py * qyn], -1)
    a, b = torch.cat([eq_x, eq_y], 1), torch.cat([px, py], 1)[..., None]  # (n, 128, 8), (n, 128, 1)
    coef = torch.linalg.lstsq(a, b).solution[..., 0]  # (n, 8)
    return torch.cat([coef, torch.ones(n, 1, dtype=coef.dtype)], 1).view(n, 3, 3)


def geometry(out: Tensor) -> dict[str, Tensor]:
    """Per-sample transform parameters recovered from transformed coordinate images."""
    m = fit_homographies(out)
    g, t = m[:, 2, :2], m[:, :2, 2]  # perspective row, translation
    jac = m[:, :2, :2] - t[:, :, None] * g[:, None, :]  # d input / d output at the output's centre
    det = torch.linalg.det(jac)
    flip = det < 0
    unflipped = jac.clone()
    unflipped[:, :, 0] *= torch.where(flip, -1.0, 1.0).to(jac.dtype)[:, None]  # undo the mirror of the output's x
    angle = torch.atan2(unflipped[:, 1, 0] - unflipped[:, 0, 1], unflipped[:, 0, 0] + unflipped[:, 1, 1])
    cols = jac.norm(dim=1)  # input units per output unit along x and y
    return {
        "flip": flip.double(),
        "side": det.abs().sqrt(),  # crop side fraction / zoom
        "aspect": cols[:, 0] / cols[:, 1],
        "angle": angle * (180 / math.pi),
        "warp_x": g[:, 0],
        "warp_y": g[:, 1],
    }


def lighting(out: Tensor) -> dict[str, Tensor]:
    """(brightness, contrast) from grey levels 0.25 / 0.5 / 0.75: out = sigmoid((logit(x) + logit(b)) * c)."""
    lo = torch.logit(out.mean((2, 3)).double(), 1e-6)  # (n, 3)
    contrast = (lo[:, 2] - lo[:, 0]) / (2 * math.log(3))
    return {"brightness": torch.sigmoid(lo[:, 1] / contrast), "contrast": contrast}


def fastai_apply(tfms: list, x: Tensor, batch: int) -> Tensor:
    """fastai's training-mode pipeline over ``x`` in batches of ``batch``."""
    pipe = Pipeline(tfms)
    pipe.split_idx = 0  # training: random draws (validation would centre the crop and skip the rest)
    return torch.cat([pipe(TensorImage(x[i : i + batch])).as_subclass(Tensor) for i in range(0, len(x), batch)])


def ours_apply(augment: Augment, x: Tensor, size: int) -> Tensor:
    return augment(x, size, torch.Generator().manual_seed(1))


def rounded(features: dict[str, Tensor]) -> dict[str, Tensor]:
    # Neutral draws (no rotation, no zoom, no warp: a quarter of each) must tie exactly across pipelines.
    return {k: (v * 1e3).round() / 1e3 for k, v in features.items()}


def ks_pvalues(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> dict[str, float]:
    a, b = rounded(ours), rounded(theirs)
    return {k: float(ks_2samp(a[k].numpy(), b[k].numpy()).pvalue) for k in a}


@pytest.fixture(scope="module", autouse=True)
def seeded() -> None:
    torch.manual_seed(0)  # fastai draws from the global torch and Python streams
    random.seed(0)


@pytest.fixture(scope="module")
def fastai_affine() -> dict[str, Tensor]:
    """aug_transforms' flip, rotate, zoom and warp (min_scale 1: no crop), at the input's own size."""
    return geometry(fastai_apply(aug_transforms(size=64, max_lighting=0), coordinate_image(N, 64), 500))


def test_crop_matches_random_resized_crop_gpu() -> None:
    # aug_transforms(min_scale=0.75) appends RandomResizedCropGPU(size, min_scale, ratio=(1, 1)): that object.
    crop = [t for t in aug_transforms(size=128, min_scale=DEFAULT.min_scale) if isinstance(t, RandomResizedCropGPU)]
    # 256 -> 128 px keeps fastai's align_corners=True (a (side - 1) / side scale) below 0.4% of the side.
    theirs = geometry(fastai_apply(crop, coordinate_image(N, 256), 1))
    crop_only = dataclasses.replace(DEFAULT, flip_p=0.0, p_affine=0.0, p_lighting=0.0)
    ours = geometry(ours_apply(crop_only, coordinate_image(N, 256), 128))
    pvalues = ks_pvalues(ours, theirs)
    assert min(pvalues["side"], pvalues["aspect"]) > ALPHA, pvalues
    assert ours["side"].min() > math.sqrt(DEFAULT.min_scale) - 0.01 and theirs["side"].max() < 1.01


def test_flip_rotate_zoom_warp_match_aug_transforms(fastai_affine: dict[str, Tensor]) -> None:
    affine_only = dataclasses.replace(DEFAULT, min_scale=1.0, p_lighting=0.0)
    ours = geometry(ours_apply(affine_only, coordinate_image(N, 64), 64))
    pvalues = ks_pvalues(ours, fastai_affine)
    assert min(pvalues.values()) > ALPHA, pvalues
    # The measurement sees what it should: half flipped, rotations within 10 degrees (the warp adds a little).
    assert abs(ours["flip"].mean() - 0.5) < 0.05 and ours["angle"].abs().max() < DEFAULT.max_rotate + 0.5
    assert 1 / DEFAULT.max_zoom < float(ours["side"].median()) < 1 and float(ours["warp_x"].abs().max()) > 0.1


def test_a_changed_default_fails_the_comparison(fastai_affine: dict[str, Tensor]) -> None:
    rotate_20 = dataclasses.replace(DEFAULT, min_scale=1.0, p_lighting=0.0, max_rotate=20.0)
    pvalues = ks_pvalues(geometry(ours_apply(rotate_20, coordinate_image(N, 64), 64)), fastai_affine)
    assert pvalues["angle"] < ALPHA, pvalues


def test_lighting_matches_brightness_and_contrast() -> None:
    grey = torch.tensor([0.25, 0.5, 0.75])[None, :, None, None].expand(N, 3, 4, 4).contiguous()
    no_geometry = {"do_flip": False, "max_rotate": 0.0, "max_zoom": 1.0, "max_warp": 0.0}
    theirs = lighting(fastai_apply(aug_transforms(**no_geometry), grey, N))
    lighting_only = dataclasses.replace(DEFAULT, min_scale=1.0, flip_p=0.0, p_affine=0.0)
    ours = lighting(ours_apply(lighting_only, grey, 4))
    pvalues = ks_pvalues(ours, theirs)
    assert min(pvalues.values()) > ALPHA, pvalues
    untouched = rounded(ours)["contrast"] == 1  # p_lighting 0.75: a quarter keeps its contrast
    assert 0.2 < float(untouched.double().mean()) < 0.3 and ours["contrast"].max() < 1 / 0.8 + 1e-3
