"""MixUp, CutMix and label smoothing against fastai's own callbacks and loss, given the same draws.

fastai's ``MixUp`` / ``CutMix`` callbacks run on a real (tiny) ``Learner``: their ``before_train`` swaps in the
mixing loss and ``before_batch`` mixes the batch. Their random draws (lambda, the permutation, CutMix's box centre)
are replaced by the ones ours made, so the mixed images and the losses must agree exactly.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.mixup import CutMix, MixUp
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropy, LabelSmoothingCrossEntropyFlat
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota.mixup import _beta, cutmix, mixed_loss, mixup
from imagenette_sota.module import ImagenetteClassifier

B, K = 8, 5


class Fixed:
    """Stands in for fastai's Beta distribution: ``sample`` returns the draw ours made."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def sample(self, shape: tuple[int, ...]) -> Tensor:
        return self.value.reshape(shape)


def fastai_mixed(callback: MixUp | CutMix, loss_func: nn.Module, x: Tensor, y: Tensor, pred: Tensor) -> tuple:
    """(mixed images, loss) from fastai's callback on a tiny Learner, in training."""
    dl = DataLoader(TensorDataset(x, y), batch_size=B)
    learn = Learner(DataLoaders(dl, dl), nn.Flatten(), loss_func=loss_func, cbs=callback)
    learn.xb, learn.yb, learn.training = (x.clone(),), (y,), True
    callback.before_train()  # swaps in the mixing loss (the loss takes integer targets)
    callback.before_batch()
    return learn.xb[0], learn.loss_func(pred, *learn.yb)


@pytest.fixture
def batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 3, 16, 16, generator=g), torch.arange(B) % K, torch.randn(B, K, generator=g)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_equals_fastai_mixup(
    batch: tuple[Tensor, Tensor, Tensor], eps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y, pred = batch
    mixed, y_a, y_b, lam = mixup(x, torch.arange(B), alpha=0.4, generator=torch.Generator().manual_seed(3))
    perm = y_b  # the labels were the indices: the partner permutation
    ours = mixed_loss(partial(F.cross_entropy, reduction="none", label_smoothing=eps), pred, y[y_a], y[perm], lam)
    callback = MixUp(0.4)
    callback.distrib = Fixed(lam)  # fastai takes max(lam, 1 - lam) itself: ours is already that
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: perm.clone())
    loss_func = LabelSmoothingCrossEntropyFlat(eps=eps) if eps else CrossEntropyLossFlat()
    their_x, their_loss = fastai_mixed(callback, loss_func, x, y, pred)
    torch.testing.assert_close(mixed, their_x)
    torch.testing.assert_close(ours, their_loss)
    assert not torch.allclose(ours, F.cross_entropy(pred, y, label_smoothing=eps))  # the mixing mattered


def test_cutmix_equals_fastai_cutmix(batch: tuple[Tensor, Tensor, Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, pred = batch
    mixed, y_a, y_b, lam = cutmix(x, torch.arange(B), alpha=1.0, generator=torch.Generator().manual_seed(5))
    # Ours draws lambda, the permutation, then the box centre's x and y: replay them into fastai's calls.
    g = torch.Generator().manual_seed(5)
    raw_lam = _beta(1.0, 1, torch.device("cpu"), g)
    perm = torch.randperm(B, generator=g)
    centre = [torch.randint(0, 16, (1,), generator=g) for _ in range(2)]
    assert torch.equal(perm, y_b)
    ours = mixed_loss(partial(F.cross_entropy, reduction="none"), pred, y[y_a], y[perm], lam)
    callback = CutMix(1.0)
    callback.distrib = Fixed(raw_lam)
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: perm.clone())
    monkeypatch.setattr(torch, "randint", lambda *a, **kw: centre.pop(0))
    their_x, their_loss = fastai_mixed(callback, CrossEntropyLossFlat(), x, y, pred)
    torch.testing.assert_close(mixed, their_x)
    torch.testing.assert_close(lam, callback.lam.expand(B))
    torch.testing.assert_close(ours, their_loss)
    assert 0 < float(lam[0]) < 1  # a box was pasted


class FixedLogits(nn.Module):
    """A backbone whose logits are ``pred`` whatever the images: the module's loss is then all that is tested."""

    def __init__(self, pred: Tensor) -> None:
        super().__init__()
        self.pred = nn.Parameter(pred.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.pred


def test_label_smoothing_is_fastai_loss(batch: tuple[Tensor, Tensor, Tensor]) -> None:
    x, y, pred = batch
    for eps in (0.1, 0.3):
        model = ImagenetteClassifier(lambda n: FixedLogits(pred), num_classes=pred.shape[1], label_smoothing=eps)
        ours = model.training_step((x, y), 0)["loss"]  # the module's own training loss (no mixup)
        torch.testing.assert_close(ours, LabelSmoothingCrossEntropy(eps=eps)(pred, y))
