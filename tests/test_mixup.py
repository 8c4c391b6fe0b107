"""MixUp, CutMix, the mixed loss and label smoothing against their definitions."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from imagenette_sota.mixup import cutmix, mixed_loss, mixup

B, K = 16, 10


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (B, 3, 24, 32) with distinct labels, so y[perm] reveals the permutation."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 24, 32, generator=g), torch.arange(B)


def test_mixup_lam_at_least_half_and_images_mixed_exactly() -> None:
    x, y = batch()
    lams = []
    for seed in range(20):
        x_mix, y_a, y_b, lam = mixup(x, y, alpha=0.4, generator=torch.Generator().manual_seed(seed))
        assert lam.shape == (B,) and lam.dtype == torch.float32
        assert torch.equal(y_a, y)
        assert sorted(y_b.tolist()) == list(range(B))  # a permutation of the batch
        w = lam.view(B, 1, 1, 1)
        assert torch.equal(x_mix, w * x + (1 - w) * x[y_b])
        lams.append(lam)
    lam = torch.cat(lams)
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    # Beta(0.4, 0.4) folded onto [0.5, 1]: mass piles up near 1 and the mean is about 0.84.
    assert 0.78 < lam.mean() < 0.9
    assert lam.unique().numel() == lam.numel()  # one lam per sample, not per batch


def test_mixup_seed_repeats_and_differs() -> None:
    x, y = batch()
    a = mixup(x, y, 0.4, generator=torch.Generator().manual_seed(7))
    b = mixup(x, y, 0.4, generator=torch.Generator().manual_seed(7))
    c = mixup(x, y, 0.4, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[3], c[3])


def test_mixup_rejects_non_positive_alpha() -> None:
    x, y = batch()
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, alpha=0.0)


def test_cutmix_lam_is_the_pasted_box_fraction() -> None:
    x, y = batch()
    h, w = x.shape[-2:]
    fractions = []
    for seed in range(30):
        x_mix, y_a, y_b, lam = cutmix(x, y, alpha=1.0, generator=torch.Generator().manual_seed(seed))
        assert lam.shape == (B,) and torch.all(lam == lam[0])  # one box per batch
        assert torch.equal(y_a, y)
        pasted = (x_mix != x).any(dim=1)  # (B, H, W): where the partner's pixels went
        box = pasted.any(dim=0)
        # Exactly the same box in every image (none where an image is its own partner), taken from the
        # partner at the same place.
        own = y_b == y
        assert torch.equal(pasted[~own], box.expand_as(pasted[~own])) and not pasted[own].any()
        assert torch.equal(x_mix[:, :, box], x[y_b][:, :, box])
        assert torch.equal(x_mix[:, :, ~box], x[:, :, ~box])
        if box.any():  # a rectangle: its row and column extents multiply to its area
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == box.sum()
        assert lam[0].item() == pytest.approx(1 - box.sum().item() / (h * w), abs=1e-6)
        fractions.append(box.sum().item() / (h * w))
    assert 0 < sum(fractions) / len(fractions) < 0.6
    assert any(0 < f < 1 for f in fractions)


def test_cutmix_seed_repeats() -> None:
    x, y = batch()
    a = cutmix(x, y, 1.0, generator=torch.Generator().manual_seed(3))
    b = cutmix(x, y, 1.0, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_mixed_loss_definition_and_identity() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, K, generator=g)
    y_a, y_b = torch.randint(0, K, (B,), generator=g), torch.randint(0, K, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    per_sample = partial(F.cross_entropy, reduction="none")
    by_hand = sum(
        lam[i] * F.cross_entropy(logits[i : i + 1], y_a[i : i + 1])
        + (1 - lam[i]) * F.cross_entropy(logits[i : i + 1], y_b[i : i + 1])
        for i in range(B)
    )
    torch.testing.assert_close(mixed_loss(per_sample, logits, y_a, y_b, lam), by_hand / B)
    # lam = 1 is no mixing at all: the plain loss, whatever the partner labels are.
    plain = F.cross_entropy(logits, y_a, label_smoothing=0.1)
    smoothed = partial(F.cross_entropy, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(mixed_loss(smoothed, logits, y_a, y_b, torch.ones(B)), plain)
    assert not torch.allclose(mixed_loss(smoothed, logits, y_a, y_b, torch.full((B,), 0.5)), plain)


def test_label_smoothing_is_cross_entropy_against_smoothed_one_hot() -> None:
    eps = 0.1
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(B, K, generator=g), torch.randint(0, K, (B,), generator=g)
    target = (1 - eps) * F.one_hot(y, K).float() + eps / K
    by_hand = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(F.cross_entropy(logits, y, label_smoothing=eps), by_hand)
    # fastai's LabelSmoothingCrossEntropy form: eps * mean(-log p) + (1 - eps) * nll.
    logp = logits.log_softmax(dim=1)
    fastai_form = eps * (-logp.mean(dim=1)).mean() + (1 - eps) * F.nll_loss(logp, y)
    torch.testing.assert_close(F.cross_entropy(logits, y, label_smoothing=eps), fastai_form)
    assert not torch.allclose(F.cross_entropy(logits, y), by_hand)
