"""Predictor and checkpoints for inference: a fit's checkpoint alone classifies any image as validation does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Imagenette

from imagenette_sota import quiet
from imagenette_sota.cli import cli
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.dataset import BadImageError
from imagenette_sota.models import xresnet18
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.predict import Predictor
from imagenette_sota.trained import DATA_KEY, CheckpointError, load


@pytest.fixture(scope="module")
def predictor(tiny_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_ckpt, device="cpu")


def test_checkpoint_carries_what_inference_needs(tiny_ckpt: Path, mini_dir: Path, tmp_path: Path) -> None:
    saved = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert saved["backbone"] == "imagenette_sota.models.xresnet18"
    state = saved[DATA_KEY]
    wnids = sorted(p.name for p in (mini_dir / "train").iterdir())
    assert state["classes"] == wnids
    assert state["class_names"] == [Imagenette._WNID_TO_CLASS[w][0] for w in wnids]  # torchvision's names
    assert (state["presize"], state["train_size"], state["normalize"]) == (64, 32, "imagenet")
    # Loading needs no dataset folder and no config: the checkpoint alone, copied elsewhere.
    alone = tmp_path / "elsewhere.ckpt"
    shutil.copy(tiny_ckpt, alone)
    trained = load(alone)
    assert trained.backbone is xresnet18 and trained.presize == 64 and list(trained.classes) == wnids


def test_predictor_matches_validate_on_the_val_folder(
    tiny_ckpt: Path, mini_dir: Path, predictor: Predictor, tmp_path: Path
) -> None:
    args = [
        "validate",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.backbone",
        "imagenette_sota.models.xresnet18",
        "--data.root",
        str(mini_dir),
    ]
    args += [
        "--data.presize",
        "64",
        "--data.train_size",
        "32",
        "--data.num_workers",
        "0",
        "--data.cache",
        "false",  # the Predictor decodes each file: the same pixels as the decoding path (the cache: a sub-pixel shift)
        "--ckpt_path",
        str(tiny_ckpt),
    ]
    args += [*quiet.CLI_ARGS, "--trainer.accelerator", "cpu"]
    validated = cli(args).trainer.callback_metrics["val/acc"].item()

    files = sorted((mini_dir / "val").glob("*/*"))
    labels = torch.tensor([predictor.classes.index(f.parent.name) for f in files])
    ours = predictor(files, top_k=1)
    probs = torch.stack([p.probs for p in ours])
    assert (probs.argmax(1) == labels).float().mean().item() == pytest.approx(validated, abs=1e-6)
    # Per image, the probabilities of Lightning's own predict loop over the data module's val loader.
    dm = ImagenetteDataModule(root=mini_dir, presize=64, train_size=32, num_workers=0, cache=False)
    model = ImagenetteClassifier.load_from_checkpoint(tiny_ckpt, backbone=xresnet18, weights_only=True)
    trainer = quiet.trainer(accelerator="cpu")
    lightning = torch.cat(trainer.predict(model, dm, ckpt_path=tiny_ckpt, weights_only=True))
    torch.testing.assert_close(probs, lightning, atol=1e-5, rtol=0)
    assert [p.top[0].name for p in ours] == [predictor.class_names[i] for i in lightning.argmax(1)]


def test_any_input_is_the_same_image(predictor: Predictor, photos: list[Path], tmp_path: Path) -> None:
    photo = Image.open(photos[0]).convert("RGB")
    want = predictor.presized(photo)
    assert want.dtype == torch.uint8 and want.shape == (3, 64, 64)
    photo.save(tmp_path / "x.png")
    photo.save(tmp_path / "x.webp", lossless=True)
    rgba = photo.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))  # a real alpha channel: dropped, like training
    same = [
        tmp_path / "x.png",
        str(tmp_path / "x.webp"),
        (tmp_path / "x.png").read_bytes(),
        rgba,
        np.asarray(photo),  # (H, W, 3)
        torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1),  # (3, H, W)
    ]
    for image in same:
        assert torch.equal(predictor.presized(image), want), type(image)
    # CMYK round trip: within one level. 16-bit greyscale: scaled, not clipped, equal to its 8-bit version +- 1.
    assert (predictor.presized(photo.convert("CMYK")).int() - want.int()).abs().max() <= 1
    grey = Image.open(next(p for p in photos if "garbage_truck" in p.name))
    assert grey.mode == "L"
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    eight = predictor.presized(grey)
    assert (predictor.presized(tmp_path / "grey16.png").int() - eight.int()).abs().max() <= 1
    assert torch.equal(eight[0], eight[2])  # grey becomes three equal channels
    # A batch tensor is a batch; answers carry top-k ids, names and the full distribution.
    batch = torch.stack([want, eight])
    answers = predictor(batch, top_k=3)
    assert len(answers) == 2 and [len(a.top) for a in answers] == [3, 3]
    assert answers[0].probs.sum().item() == pytest.approx(1, abs=1e-5)
    assert answers[0].top[0].probability == answers[0].probs.max().item()
    assert answers[0].top[0].name == predictor.class_names[predictor.classes.index(answers[0].top[0].class_id)]
    # The presized batch goes straight to the network: the same answers as one image at a time, in any chunking.
    one_by_one = [predictor(image)[0].probs for image in batch]
    assert all(torch.equal(a.probs, b) for a, b in zip(predictor(batch, batch_size=1), one_by_one, strict=True))
    with pytest.raises(ValueError, match="must be uint8"):
        predictor.presized(torch.rand(3, 8, 8))


def test_bad_file_is_named(predictor: Predictor, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(BadImageError, match="notes.txt"):
        predictor([tmp_path / "notes.txt"])


def test_tta_goes_through_the_tta_code(tiny_ckpt: Path, predictor: Predictor, photos: list[Path]) -> None:
    x = torch.stack([predictor.presized(p) for p in photos[:4]])
    flip = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta="flip")
    # fastai's TTA with beta 0.25: 0.25 * centre view + 0.75 * the mirrored view.
    want = torch.lerp(predictor.probabilities(x.flip(-1)), predictor.probabilities(x), 0.25)
    torch.testing.assert_close(flip.probabilities(x), want, atol=1e-6, rtol=0)
    five = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta="five_crop").probabilities(x)
    augment = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta="augment").probabilities(x)
    for probs in (five, augment):
        assert probs.shape == (4, 10) and not torch.allclose(probs, predictor.probabilities(x))


def test_augment_tta_redraws_crops_and_answers_alike_in_any_batch(tiny_ckpt: Path, photos: list[Path]) -> None:
    augment = Predictor.from_checkpoint(tiny_ckpt, device="cpu", tta="augment")
    views = augment.prepared(photos[0])
    # fastai's tta re-draws the presize crop in every augmented pass: the centre crop, then 4 crops of their own.
    assert views.shape == (5, 3, augment.presize, augment.presize)
    assert torch.equal(views[0], augment.presized(photos[0]))
    assert sum(not torch.equal(view, views[0]) for view in views[1:]) >= 3  # the photos are not square
    torch.testing.assert_close(augment.prepared(photos[0]), views, atol=0, rtol=0)  # seeded by the image itself
    # An image's answer does not depend on its batch, its position in it, the call or the path it came by.
    together = [p.probs for p in augment(photos[:4])]
    reversed_in_threes = [p.probs for p in augment(photos[3::-1], batch_size=3)][::-1]
    alone = [augment(photo)[0].probs for photo in photos[:4]]
    from_files = [p.probs for _, p in augment.classify_files(photos[:4], batch_size=2)]
    for answers in (reversed_in_threes, alone, from_files):
        torch.testing.assert_close(torch.stack(answers), torch.stack(together), atol=1e-5, rtol=0)
    plain = Predictor.from_checkpoint(tiny_ckpt, device="cpu")
    assert not torch.allclose(torch.stack(together), torch.stack([p.probs for p in plain(photos[:4])]), atol=1e-4)


def test_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    for path, reason in (("missing.ckpt", "does not exist"), ("notes.txt", "not a checkpoint"), ("plain.pt", "no")):
        with pytest.raises(CheckpointError, match=reason) as e:
            load(tmp_path / path)
        assert path in str(e.value)


def test_bf16_runs_the_network_in_bf16_and_stays_close_to_fp32(tiny_ckpt: Path, photos: list[Path]) -> None:
    fp32 = torch.stack([p.probs for p in Predictor.from_checkpoint(tiny_ckpt, device="cpu")(photos)])
    bf16 = torch.stack([p.probs for p in Predictor.from_checkpoint(tiny_ckpt, "cpu", precision="bf16")(photos)])
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.sum(1), torch.ones(len(photos)), atol=1e-5)
    assert not torch.equal(bf16, fp32)  # autocast did run the convolutions in bf16
    assert (bf16 - fp32).abs().max() < 2e-2  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match=r"precision='fp16'.*'32', 'bf16'"):
        Predictor.from_checkpoint(tiny_ckpt, "cpu", precision="fp16")
