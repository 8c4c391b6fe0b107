"""Test-time augmentation on one process: fastai's formula, its identities on real images, exactly-once gathering."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import quiet, seeds
from imagenette_sota.callbacks import ValidationPredictions, tta
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.dataset import CropViews, PresizedImages
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.tta import TTASettings, combine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dm(mini_dir: Path) -> ImagenetteDataModule:
    """The mini archive's 100 validation images, presized to 64 px, viewed at 32 px in batches of 32."""
    # The decoding path: these tests redraw its presize crops themselves (tests/test_cache.py covers the cache).
    return ImagenetteDataModule(root=mini_dir, presize=64, train_size=32, batch_size=16, num_workers=0, cache=False)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return XResNet(10, (1, 1, 1, 1), widen=0.5).eval()


@pytest.fixture(scope="module")
def trainer() -> L.Trainer:
    return quiet.trainer(accelerator="cpu", devices=1)


def softmax_of(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).softmax(1)


@pytest.fixture(scope="module")
def raw(dm: ImagenetteDataModule) -> tuple[Tensor, Tensor]:
    """All presized validation images (uint8) and labels, in dataset order."""
    dm.setup("predict")
    items = [dm.val_set[i] for i in range(len(dm.val_set))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@pytest.fixture(scope="module")
def plain(model: nn.Module, dm: ImagenetteDataModule, raw: tuple[Tensor, Tensor]) -> Tensor:
    """Centre-view probabilities of every validation image, computed without Lightning."""
    return softmax_of(model, dm.val_transform(raw[0]))


def test_combine_is_fastais_formula() -> None:
    centre = torch.tensor([[0.6, 0.4]])
    views = [torch.tensor([[0.2, 0.8]]), torch.tensor([[0.4, 0.6]])]
    torch.testing.assert_close(combine(centre, views), torch.tensor([[0.375, 0.625]]))  # .25 centre + .75 mean
    torch.testing.assert_close(combine(centre, views, beta=0.0), torch.tensor([[0.3, 0.7]]))
    torch.testing.assert_close(combine(centre, views, use_max=True), torch.tensor([[0.6, 0.8]]))
    assert combine(centre, []) is centre


def test_no_views_or_beta_one_give_the_plain_prediction(
    trainer: L.Trainer, model: nn.Module, dm: ImagenetteDataModule, raw: tuple[Tensor, Tensor], plain: Tensor
) -> None:
    probs, targets = tta(trainer, model, dm, TTASettings(n=0))
    assert probs.shape == (100, 10) and torch.equal(targets, raw[1])  # every image once, in dataset order
    torch.testing.assert_close(probs, plain)
    torch.testing.assert_close(tta(trainer, model, dm, TTASettings(n=2, beta=1.0))[0], plain)


def test_augmented_passes_are_seeded_and_change_the_prediction(
    trainer: L.Trainer, model: nn.Module, dm: ImagenetteDataModule, plain: Tensor
) -> None:
    def augmented(**settings: Any) -> Tensor:
        return tta(trainer, model, dm, TTASettings(n=2, **settings))[0]

    first = augmented(seed=0)
    assert torch.equal(first, augmented(seed=0))
    assert not torch.allclose(first, augmented(seed=1))
    assert not torch.allclose(first, plain)
    torch.testing.assert_close(first.sum(1), torch.ones(100))
    assert bool((augmented(use_max=True) >= plain - 1e-6).all())  # plain: batched differently, float noise


def test_augmented_views_redraw_the_presize_crop_per_sample_and_view(
    trainer: L.Trainer, model: nn.Module, mini_dir: Path, raw: tuple[Tensor, Tensor]
) -> None:
    # fastai's tta() runs the dataset in training mode: each pass re-draws the presize crop along the long side.
    # With an identity augmentation the view is exactly the training-mode crop drawn from (seed, sample, view).
    dm = ImagenetteDataModule(
        root=mini_dir, presize=64, train_size=32, batch_size=16, num_workers=0, augment=None, cache=False
    )
    dm.setup("predict")
    train_mode = PresizedImages(dm.val_set.items, presize=64, train=True)
    crops = torch.stack([train_mode[(i, seeds.derive(7, seeds.TTA_CROP, i, 0))][0] for i in range(len(train_mode))])
    assert (crops != raw[0]).flatten(1).any(1).float().mean() > 0.5  # most Imagenette photos are not square
    expected = softmax_of(model, dm.train_transform(crops))
    torch.testing.assert_close(
        tta(trainer, model, dm, TTASettings(n=1, beta=0.0, seed=7))[0], expected, atol=1e-5, rtol=0
    )
    views = CropViews(dm.val_set, 3, seed=7)
    x, _ = views[5]
    assert torch.equal(x[0], raw[0][5]) and torch.equal(x[1], crops[5])  # the centre first, then view 0
    assert not torch.equal(x[1], x[2]) and torch.equal(views[5][0], x)  # another view moves; the same repeats


def test_flip_averages_the_mirrored_centre_view(
    trainer: L.Trainer, model: nn.Module, dm: ImagenetteDataModule, raw: tuple[Tensor, Tensor], plain: Tensor
) -> None:
    mirrored = softmax_of(model, dm.val_transform(raw[0].flip(-1)))
    assert not torch.allclose(mirrored, plain)
    torch.testing.assert_close(tta(trainer, model, dm, TTASettings(mode="flip", beta=0.5))[0], (plain + mirrored) / 2)


def test_five_crop_of_the_whole_image_is_the_centre_view(
    trainer: L.Trainer, model: nn.Module, dm: ImagenetteDataModule, plain: Tensor
) -> None:
    torch.testing.assert_close(tta(trainer, model, dm, TTASettings(mode="five_crop", crop=1.0))[0], plain)
    assert not torch.allclose(tta(trainer, model, dm, TTASettings(mode="five_crop"))[0], plain)


class Mirrors(L.LightningDataModule):
    """Not Imagenette: 12 random float images, mirror-symmetric left to right if `symmetric`."""

    def __init__(self, symmetric: bool, order: list[int] | None = None) -> None:
        super().__init__()
        half = torch.rand(12, 3, 8, 4, generator=torch.Generator().manual_seed(0))
        x = torch.cat([half, half.flip(-1)], -1) if symmetric else torch.rand(12, 3, 8, 8)
        self.data, self.order = TensorDataset(x, torch.arange(12) % 3), order

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=5, sampler=self.order)

    def val_transform(self, x: Tensor) -> Tensor:
        return x - 0.5

    def train_transform(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=generator)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 3))


def test_reuse_flip_of_a_symmetric_image_changes_nothing(trainer: L.Trainer) -> None:
    model = net()
    with torch.no_grad():
        plain = model(Mirrors(symmetric=True).data.tensors[0] - 0.5).softmax(1)
    mirror = TTASettings(mode="flip", beta=0.0)  # the mirror alone
    flipped, targets = tta(trainer, model, Mirrors(symmetric=True), mirror)
    torch.testing.assert_close(flipped, plain)
    assert torch.equal(targets, torch.arange(12) % 3)
    assert not torch.allclose(tta(trainer, model, Mirrors(symmetric=False), mirror)[0], plain)
    assert not torch.allclose(tta(trainer, model, Mirrors(symmetric=True), TTASettings(n=2))[0], plain)  # noisy views


@pytest.mark.parametrize(
    ("order", "message"),
    [([0, 1, 1, *range(2, 12)], "0 missing, 1 repeated"), ([i for i in range(12) if i != 5], "1 missing, 0 repeated")],
)
def test_samples_predicted_twice_or_never_are_refused(trainer: L.Trainer, order: list[int], message: Any) -> None:
    with pytest.raises(RuntimeError, match=message):
        tta(trainer, net(), Mirrors(symmetric=True, order=order), TTASettings(n=0))


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"mode": "mirror"}, "mode='mirror': choose"), ({"n": -1}, "n=-1"), ({"beta": 2.0}, "beta=2.0")],
)
def test_bad_settings_name_themselves(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TTASettings(**settings)


class Passes(nn.Module):
    """Returns the logits table[call][i] for input i: one call per pass over a one-batch loader."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table, self.calls = nn.Parameter(table, requires_grad=False), 0  # fastai reads the device from it

    def forward(self, x: Tensor) -> Tensor:
        out = self.table[self.calls][x.long()]
        self.calls += 1
        return out


@pytest.mark.parametrize(("beta", "use_max"), [(0.25, False), (0.6, False), (0.25, True)])
def test_combine_equals_fastai_learner_tta(beta: float, use_max: bool) -> None:
    from fastai.data.core import Datasets
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    n, size, classes = 4, 6, 3
    table = torch.randn(n + 1, size, classes, generator=torch.Generator().manual_seed(0))  # n augmented, then centre
    dsets = Datasets(
        list(range(size)), [[lambda i: torch.tensor(float(i))], [lambda i: i % classes]], splits=[list(range(size))] * 2
    )
    dls = dsets.dataloaders(bs=size, shuffle=False)
    learn = Learner(dls, Passes(table), loss_func=CrossEntropyLossFlat())
    theirs, _ = learn.tta(dl=dls.valid, n=n, beta=beta, use_max=use_max)  # fastai's order: the n passes, then centre
    probs = table.softmax(-1)
    ours = combine(probs[n], list(probs[:n]), beta, use_max)
    torch.testing.assert_close(ours, theirs)


class Images(Callback):
    """Counts the images each forward pass of a module sees (a hook on it)."""

    def __init__(self, module: nn.Module) -> None:
        self.seen = 0
        module.register_forward_hook(lambda _, args, out: setattr(self, "seen", self.seen + len(args[0])))


@pytest.fixture(scope="module")
def fitted(mini_dir: Path) -> tuple[L.Trainer, ImagenetteClassifier, ImagenetteDataModule, ValidationPredictions]:
    """A tiny classifier after 2 steps and a validation of the mini archive's 100 images, recorded (and its accuracy
    kept in ``recorder.accuracy``: a predict loop resets the Trainer's metrics)."""
    torch.manual_seed(0)
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=[1, 1, 1, 1], widen=0.25), num_classes=10)
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, val_size=40, batch_size=16, num_workers=0)
    recorder = ValidationPredictions()
    trainer = quiet.trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, callbacks=[recorder])
    trainer.fit(model, dm)
    recorder.accuracy = trainer.callback_metrics["val/acc"].item()
    return trainer, model, dm, recorder


def test_a_tta_after_a_fit_takes_its_centre_view_from_the_last_validation(fitted: Any) -> None:
    trainer, model, dm, recorder = fitted
    flip, images = TTASettings(mode="flip"), Images(model.model)
    full, targets = tta(trainer, model, dm, flip)
    assert images.seen == 200  # the centre and the mirrored view of each of the 100 images
    centre = recorder.centre_for(model, dm)
    assert centre is not None and torch.equal(centre["targets"], targets)
    plain = tta(trainer, model, dm, TTASettings(n=0))[0]
    torch.testing.assert_close(centre["plain"], plain)  # the validation's predictions, in dataset order
    accuracy = (plain.argmax(1) == targets).float().mean().item()
    assert accuracy == pytest.approx(recorder.accuracy, abs=1e-7)
    images.seen = 0
    reused, again = tta(trainer, model, dm, flip, centre=centre)
    assert images.seen == 100 and torch.equal(again, targets)  # the mirrored view only
    torch.testing.assert_close(reused, full)


def test_the_centre_view_is_predicted_again_when_the_weights_or_the_size_changed(fitted: Any) -> None:
    trainer, model, dm, recorder = fitted
    assert recorder.centre_for(model, dm) is not None
    weight = next(model.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight[0].add_(1e-3)
    assert recorder.centre_for(model, dm) is None
    with torch.no_grad():
        weight.copy_(kept)
    assert recorder.centre_for(model, dm) is not None
    other = ImagenetteDataModule(root=dm.root, presize=48, train_size=32, val_size=32, batch_size=16)
    assert recorder.centre_for(model, other) is None
    with pytest.raises(ValueError, match="its targets are not the predict set's"):
        shuffled = recorder.centre_for(model, dm) | {"targets": recorder.result["targets"].roll(1)}
        tta(trainer, model, dm, TTASettings(mode="flip"), centre=shuffled)


def test_a_validation_of_part_of_the_images_is_not_recorded(mini_dir: Path) -> None:
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=[1, 1, 1, 1], widen=0.25), num_classes=10)
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, batch_size=16, num_workers=0)
    recorder = ValidationPredictions()
    trainer = quiet.trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0.5, callbacks=[recorder]
    )
    trainer.fit(model, dm)
    assert recorder.result is None and recorder.centre_for(model, dm) is None
