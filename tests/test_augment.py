"""Batch augmentation: exact identities, the geometry of each matrix, and randomness per sample."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imagenette_sota.data import augment as aug
from imagenette_sota.data.dataset import PresizedImages
from imagenette_sota.data.folders import scan_split
from imagenette_sota.data.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization, normalize


@pytest.fixture(scope="module")
def real_batch(mini_dir: Path) -> torch.Tensor:
    """Eight real presized val images, uint8 (8, 3, 64, 64)."""
    classes = sorted(p.name for p in (mini_dir / "val").iterdir())
    items = scan_split(mini_dir / "val", classes)[::13][:8]
    ds = PresizedImages(items, presize=64, train=False)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_identity_returns_the_input(real_batch: torch.Tensor) -> None:
    out = aug.Augment.identity()(real_batch, 64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, real_batch.float() / 255, atol=1e-5, rtol=0)


def test_flip_equals_tensor_flip(real_batch: torch.Tensor) -> None:
    flip_only = aug.Augment(min_scale=1, flip_p=1, max_rotate=0, max_zoom=1, max_warp=0, max_lighting=0)
    torch.testing.assert_close(flip_only(real_batch, 64), real_batch.flip(-1).float() / 255, atol=1e-5, rtol=0)


def test_quarter_turn_equals_rot90(real_batch: torch.Tensor) -> None:
    n = len(real_batch)
    m = aug.affine_matrices(torch.zeros(n, dtype=torch.bool), torch.full((n,), 90.0), torch.ones(n), *torch.rand(2, n))
    out = aug.resample(real_batch.float(), m, 64)
    # Sampling at rotated pixel centres is a pure permutation of pixels: one of the two rot90 directions.
    errors = [(out - real_batch.float().rot90(k, (-2, -1))).abs().max().item() for k in (1, -1)]
    assert min(errors) < 1e-3


def test_crop_matrix_selects_the_box(real_batch: torch.Tensor) -> None:
    n = len(real_batch)
    zero = torch.zeros(n)
    m = aug.crop_matrices(torch.full((n,), 0.25), zero, zero, zero)  # quarter area, top-left
    out = aug.resample(real_batch.float(), m, 32)
    torch.testing.assert_close(out, real_batch[..., :32, :32].float(), atol=1e-3, rtol=0)
    m = aug.crop_matrices(torch.full((n,), 0.25), zero, torch.ones(n), torch.ones(n))  # bottom-right
    torch.testing.assert_close(
        aug.resample(real_batch.float(), m, 32), real_batch[..., 32:, 32:].float(), atol=1e-3, rtol=0
    )


def test_large_shrink_area_averages_first(real_batch: torch.Tensor) -> None:
    x = real_batch.float()
    eye = torch.eye(3).expand(len(x), 3, 3)
    # 64 -> 16 is a 4x shrink: the result is the 4x4 box average, not 1-in-4 bilinear taps (aliasing).
    torch.testing.assert_close(aug.resample(x, eye, 16), F.avg_pool2d(x, 4), atol=1e-3, rtol=0)


def test_area_averaging_is_chosen_per_sample(real_batch: torch.Tensor) -> None:
    x = real_batch.float()
    n = len(x)
    # Half the batch views the whole image at 16 px (4x shrink), half a quarter-area crop (2x): each sample must
    # come out as if resampled alone, not with the batch's smallest shrink (which left the 4x ones aliased).
    scale = torch.tensor([1.0, 0.25] * (n // 2))
    m = aug.crop_matrices(scale, torch.zeros(n), torch.zeros(n), torch.zeros(n))
    assert aug.prepool_factors(m, (64, 64), (16, 16)) == [4, 2] * (n // 2)
    out = aug.resample(x, m, 16)
    for i in range(n):
        torch.testing.assert_close(out[i : i + 1], aug.resample(x[i : i + 1], m[i : i + 1], 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0::2], F.avg_pool2d(x[0::2], 4), atol=1e-3, rtol=0)


def test_validation_resize_follows_the_training_rule() -> None:
    # Presize 460 viewed at 128 px (the book's progressive stage): one-pixel stripes must average to grey in
    # validation exactly as in training (identity augmentation), not alias into bands.
    stripes = (torch.arange(460) % 2).float().expand(2, 3, 460, 460).contiguous()
    val = aug.resize(stripes, 128)
    train = aug.Augment.identity()(stripes, 128)
    torch.testing.assert_close(val, train, atol=1e-5, rtol=0)
    assert (val - 0.5).abs().max() < 0.2  # 3x3 averaging first; bilinear taps alone give 0 / 1 bands
    assert (F.interpolate(stripes, size=128, mode="bilinear") - 0.5).abs().max() > 0.4  # what it replaced


def test_homography_maps_the_corners() -> None:
    src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]).expand(3, 4, 2)
    dst = src + 0.1 * torch.randn(3, 4, 2)
    h = aug.homography(src, dst)
    pts = torch.cat([src, torch.ones(3, 4, 1)], -1) @ h.transpose(1, 2)
    torch.testing.assert_close(pts[..., :2] / pts[..., 2:], dst, atol=1e-5, rtol=0)
    torch.testing.assert_close(aug.warp_matrices(torch.zeros(2), torch.zeros(2)), torch.eye(3).expand(2, 3, 3))


def test_lighting_matches_its_definition() -> None:
    x = torch.rand(2, 3, 8, 8).clamp(0.01, 0.99)
    b, c = torch.tensor([0.4, 0.6]), torch.tensor([0.8, 1.25])
    expected = torch.sigmoid((torch.logit(x) + torch.logit(b)[:, None, None, None]) * c[:, None, None, None])
    torch.testing.assert_close(aug.lighting(x, b, c), expected)
    torch.testing.assert_close(aug.lighting(x, torch.full((2,), 0.5), torch.ones(2)), x)


def test_per_sample_parameters_differ_and_seeds_repeat(real_batch: torch.Tensor) -> None:
    a = aug.Augment()
    m = a.matrices(16, generator=torch.Generator().manual_seed(0))
    assert len({tuple(row.flatten().round(decimals=5).tolist()) for row in m}) == 16
    out1 = a(real_batch, 48, generator=torch.Generator().manual_seed(1))
    out2 = a(real_batch, 48, generator=torch.Generator().manual_seed(1))
    out3 = a(real_batch, 48, generator=torch.Generator().manual_seed(2))
    assert out1.shape == (8, 3, 48, 48) and 0 <= out1.min() and out1.max() <= 1
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)


def test_parameter_ranges_follow_the_config() -> None:
    a = aug.Augment(max_lighting=0.2, p_lighting=1.0)
    b, c = a.lighting_params(4000, generator=torch.Generator().manual_seed(0))
    assert 0.4 <= b.min() and b.max() <= 0.6
    assert 0.8 - 1e-6 <= c.min() and c.max() <= 1 / 0.8 + 1e-6
    never = aug.Augment(flip_p=0, p_affine=0, min_scale=1, max_lighting=0.2, p_lighting=0.0)
    torch.testing.assert_close(never.matrices(8), torch.eye(3).expand(8, 3, 3), atol=1e-5, rtol=0)
    # Crop side fraction = sqrt(area fraction) lies in [sqrt(min_scale), 1] when nothing else is drawn.
    crop_only = aug.Augment(flip_p=0, p_affine=0, min_scale=0.5)
    side = crop_only.matrices(2000, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    assert math.sqrt(0.5) - 1e-6 <= side.min() < 0.75 and 0.99 < side.max() <= 1 + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_scale": 0}, "min_scale"),
        ({"max_zoom": 0.9}, "max_zoom"),
        ({"flip_p": 2}, "flip_p"),
        ({"ratio": (2, 1)}, "ratio"),
    ],
)
def test_bad_parameters_name_themselves(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        aug.Augment(**kwargs)


def test_normalize_and_resize() -> None:
    x = torch.rand(4, 3, 20, 20)
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(out[:, 1], (x[:, 1] - 0.456) / 0.224)
    norm = Normalization("imagenet")
    torch.testing.assert_close(norm(x), out)
    torch.testing.assert_close(norm.inverse(out), x)  # pictures: back to [0, 1]
    assert Normalization("none")(x) is x
    assert aug.resize(x, 20) is x and aug.resize(x, (10, 12)).shape == (4, 3, 10, 12)


def test_one_generator_per_sample_draws_each_sample_as_if_alone(real_batch: torch.Tensor) -> None:
    """Per-sample generators (TTA of a user's photos): a sample's augmentation does not depend on its batch."""
    a = aug.Augment(max_lighting=0.2, p_lighting=1.0)
    x = real_batch[:4]

    def gens(order: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(100 + i) for i in order]

    together = a(x, 24, gens([0, 1, 2, 3]))
    alone = torch.cat([a(x[i : i + 1], 24, gens([i])[0]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    reordered = a(x[[3, 1, 0, 2]], 24, gens([3, 1, 0, 2]))
    torch.testing.assert_close(reordered, together[[3, 1, 0, 2]], atol=1e-5, rtol=0)
    assert not torch.allclose(together[0], a(x[:1], 24, gens([1])[0])[0], atol=1e-3)  # the seed, not the slot
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        a(x, 24, gens([0, 1, 2]))
