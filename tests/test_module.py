"""ImagenetteClassifier and the lr finder with a real Trainer on real Imagenette images (CPU, tiny sizes)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from imagenette_sota import quiet
from imagenette_sota.callbacks import LRFinder
from imagenette_sota.callbacks.lr_finder import suggest, valley
from imagenette_sota.mixup import mixed_loss, mixup
from imagenette_sota.models import XResNet, xresnet18
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle

SIZE = 32  # px: the smallest side xresnet's five stride-2 stages reduce to 1x1
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
# Layers (1, 1, 1, 1) at half width: 1.3M parameters, several times faster per step than xresnet18, for the tests that
# take many steps.
tiny_xresnet = partial(XResNet, layers=(1, 1, 1, 1), widen=0.5)


def load_split(split_dir: Path, per_class: int) -> TensorDataset:
    """Up to `per_class` images per class, centre-cropped to SIZE px and normalized, with their labels."""
    xs, ys = [], []
    for label, class_dir in enumerate(sorted(p for p in split_dir.iterdir() if p.is_dir())):
        for path in sorted(class_dir.glob("*.JPEG"))[:per_class]:
            with Image.open(path) as im:
                im = im.convert("RGB")
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.BILINEAR)
                xs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3))
            ys.append(label)
    x = torch.stack(xs).permute(0, 3, 1, 2).float() / 255  # (N, 3, SIZE, SIZE)
    return TensorDataset((x - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1), torch.tensor(ys))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_set(mini_dir: Path) -> TensorDataset:
    """All 200 training images."""
    return load_split(mini_dir / "train", per_class=20)


@pytest.fixture(scope="module")
def val_set(mini_dir: Path) -> TensorDataset:
    """All 100 validation images."""
    return load_split(mini_dir / "val", per_class=10)


def loader(data: TensorDataset, batch_size: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def test_real_images_loaded(train_set: TensorDataset, val_set: TensorDataset) -> None:
    x, y = train_set.tensors
    assert x.shape == (200, 3, SIZE, SIZE) and torch.equal(y.bincount(), torch.full((10,), 20))
    assert val_set.tensors[0].shape == (100, 3, SIZE, SIZE)
    assert -0.5 < x.mean() < 0.5 and 0.7 < x.std() < 1.3  # normalized real photos, not noise or zeros


def test_fast_dev_run_logs_the_metrics_of_the_model(train_set: TensorDataset, val_set: TensorDataset) -> None:
    torch.manual_seed(0)
    model = ImagenetteClassifier(xresnet18, num_classes=10, label_smoothing=0.1, mixup_alpha=0.4)
    trainer = quiet.trainer(accelerator="cpu", fast_dev_run=True)
    trainer.fit(model, loader(train_set, 16, shuffle=True), loader(val_set, 50))
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/acc", "val/acc_top5"} <= metrics.keys()
    # Validation uses hard labels and no mixup: recompute it from the model that was validated.
    x, y = val_set[:50]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(metrics["val/loss"], F.cross_entropy(logits, y, label_smoothing=0.1))
    acc = (logits.argmax(1) == y).float().mean()
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean()
    torch.testing.assert_close(metrics["val/acc"], acc)
    torch.testing.assert_close(metrics["val/acc_top5"], top5)
    assert top5 > acc or top5 == 1.0
    assert 1.0 < metrics["train/loss"] < 5.0  # near ln(10) at initialization, finite

    probs = torch.cat(trainer.predict(model, loader(val_set, 50)))
    assert probs.shape == (50, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(50))
    torch.testing.assert_close(probs, logits.softmax(1))


def test_test_step_logs_test_metrics(val_set: TensorDataset) -> None:
    model = ImagenetteClassifier(xresnet18, num_classes=10)
    results = quiet.trainer(accelerator="cpu", limit_test_batches=2).test(model, loader(val_set, 25))[0]
    assert results.keys() == {"test/loss", "test/acc", "test/acc_top5"}
    assert 0.0 <= results["test/acc"] <= results["test/acc_top5"] <= 1.0


def test_training_step_mixes_only_in_training(train_set: TensorDataset) -> None:
    model = ImagenetteClassifier(xresnet18, num_classes=10, label_smoothing=0.1, mixup_alpha=0.4).eval()
    x, y = train_set[:16]
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="self.log"), torch.no_grad():
        out = model.training_step((x, y), 0)
    loss = out["loss"]
    torch.manual_seed(3)
    with torch.no_grad():
        x_mix, y_a, y_b, lam = mixup(x, y, 0.4)
        for returned, drawn in zip(out["mixed"], (x_mix, y_a, y_b, lam), strict=True):  # for Inspection
            torch.testing.assert_close(returned, drawn)
        per_sample = partial(F.cross_entropy, reduction="none", label_smoothing=0.1)
        torch.testing.assert_close(loss, mixed_loss(per_sample, model(x_mix), y_a, y_b, lam))
        assert not torch.allclose(loss, F.cross_entropy(model(x), y, label_smoothing=0.1))


def test_mixup_and_cutmix_are_exclusive() -> None:
    with pytest.raises(ValueError, match="mixup or cutmix"):
        ImagenetteClassifier(xresnet18, mixup_alpha=0.4, cutmix_alpha=1.0)


def test_channels_last_is_the_default_and_gives_the_same_logits(val_set: TensorDataset) -> None:
    torch.manual_seed(0)
    plain = ImagenetteClassifier(xresnet18, num_classes=10, channels_last=False).eval()
    nhwc = ImagenetteClassifier(xresnet18, num_classes=10).eval()
    nhwc.load_state_dict(plain.state_dict())
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = val_set[:8][0]
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-4)


def test_compile_keeps_the_checkpoint_keys() -> None:
    compiled, plain = ImagenetteClassifier(xresnet18, compile=True), ImagenetteClassifier(xresnet18)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefix


def test_overfits_one_real_batch_with_the_one_cycle(train_set: TensorDataset) -> None:
    torch.manual_seed(0)
    batch = TensorDataset(*train_set[::10])  # 20 real images, 2 per class
    model = ImagenetteClassifier(tiny_xresnet, num_classes=10)
    trainer = quiet.trainer(accelerator="cpu", max_epochs=12, limit_val_batches=0)
    trainer.fit(model, loader(batch, 20))
    x, y = batch.tensors
    with torch.no_grad():  # train mode: batch statistics, as in the steps (running ones lag after 12 steps)
        assert (model(x).argmax(1) == y).float().mean() == 1.0
    assert trainer.callback_metrics["train/loss"] < 0.1  # from about ln(10) = 2.3
    # One cycle over exactly the steps Lightning took, stepped every batch, ended after the last one.
    assert trainer.lr_scheduler_configs[0].interval == "step" and trainer.global_step == 12
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3 / 1e5)
    assert trainer.optimizers[0].param_groups[0]["betas"][0] == pytest.approx(0.95)


def test_valley_on_synthetic_curves() -> None:
    lrs = [10 ** (-7 + i / 2) for i in range(18)]
    # Rising a little, a strict 12-point valley (indices 3..14), then divergence.
    losses = [0.5, 0.6, 0.7] + [2.0 - 0.1 * k for k in range(12)] + [1.0, 1.5, 3.0]
    assert valley(lrs, losses) == lrs[8]  # fastai: start 14 - 12 = 2, plus int(12 / 3) + int(12 / 6)
    assert valley(lrs[:10], [1.0 - 0.05 * k for k in range(10)]) == lrs[3]  # -1 + int(10 / 3) + int(10 / 6)
    assert valley(lrs[:5], [1.0] * 5) == lrs[0]  # a flat curve: the first lr, not fastai's wrap-around
    # Points before skip_begin, the last 5 and everything from the first NaN on are ignored.
    nan = float("nan")
    assert suggest(lrs, [9.0, *losses[:9], nan, *losses[10:]], skip_begin=1) == valley(lrs[1:10], losses[:9])
    assert suggest(lrs[:7], losses[:7], skip_begin=1) is None


def test_lr_finder_applies_the_valley_suggestion(
    train_set: TensorDataset, val_set: TensorDataset, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    finder = LRFinder(min_lr=1e-5, max_lr=1.0, num_training_steps=20, early_stop_threshold=None)
    model = ImagenetteClassifier(tiny_xresnet, num_classes=10, cycle=Cycle(123.0))
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=20,
        limit_val_batches=1,
        callbacks=[finder],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader(train_set, 10, shuffle=True), loader(val_set, 50))
    results = finder.optimal_lr.results
    assert len(results["lr"]) == len(results["loss"]) == 20
    assert results["lr"][0] == pytest.approx(1e-5) and results["lr"][-1] == pytest.approx(1.0)
    assert finder.suggestion == suggest(results["lr"], results["loss"], skip_begin=2)
    assert 1e-5 < finder.suggestion < 1.0
    assert model.cycle.lr_max == model.hparams.cycle["lr_max"] == finder.suggestion
    # The optimizer and one-cycle were rebuilt around the suggestion: the fit ended at suggestion / 1e5.
    assert trainer.optimizers[0].param_groups[0]["max_lr"] == pytest.approx(finder.suggestion)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(finder.suggestion / 1e5)
    assert trainer.global_step == 20
