"""Your own images: class folders with no split (fastai's seeded RandomSplitter, recorded in the checkpoint), the
book's random split of Imagenette, the common formats, full-size photos at presize 460.

Real images throughout: the mini archive re-laid as one folder per class, with a PNG, a WebP and a Unicode file
and class name added here, and the ten full-size ImageNet photos of ``imagenet-samples-fullsize.tgz``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from fastai.data.transforms import RandomSplitter
from fastai.vision.augment import Resize
from fastai.vision.core import PILImage
from lightning.pytorch.callbacks import Callback
from PIL import Image

from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.catalog import class_names
from imagenette_sota.data.dataset import PresizedImages, open_rgb, presize
from imagenette_sota.data.folders import find_layout, scan_classes
from imagenette_sota.data.split import file_digest, random_split
from imagenette_sota.module import ImagenetteClassifier

from .helpers import PHOTOS_ARCHIVE
from .test_cli import QUICK, cli, rejected, small
from .test_ddp import DDP, TIMEOUT, Count, deadline, tiny_xresnet

BOOK = str(Path(__file__).parents[1] / "configs" / "book_random_split.yaml")
BOOK_BASE = str(Path(__file__).parents[1] / "configs" / "book.yaml")
WNIDS = list(class_names("imagenette2-160"))
HUMAN = list(class_names("imagenette2-160").values())
UNICODE_CLASS = "Schleie – Tinca tinca 🐟"  # replaces the tench folder's wnid
UNICODE_FILE = "フレンチホルン_été.jpg"
ADDED = ("converted.PNG", "photo.WebP", UNICODE_FILE)

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(tmp_path: Path) -> list[str]:
    """No logger; config.yaml and checkpoints under ``tmp_path``."""
    return ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]


@pytest.fixture(scope="module")
def own(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini archive's 300 images as one folder per class (no train/ or val/), plus 3 images and 3 strays."""
    root = tmp_path_factory.mktemp("own") / "photos"
    for split in ("train", "val"):
        for folder in sorted((mini_dir / split).iterdir()):
            dest = root / (UNICODE_CLASS if folder.name == WNIDS[0] else folder.name)
            dest.mkdir(parents=True, exist_ok=True)
            for image in folder.iterdir():
                shutil.copy(image, dest)
    source = Image.open(sorted((mini_dir / "val" / WNIDS[1]).iterdir())[0]).convert("RGB")
    source.save(root / WNIDS[1] / ADDED[0])
    source.save(root / WNIDS[2] / ADDED[1], quality=90)
    source.save(root / WNIDS[3] / ADDED[2])
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / WNIDS[4] / "notes.txt").write_text("where these came from")
    (root / WNIDS[4] / "._photo.JPEG").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")  # a macOS fork: hidden
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    shutil.copy(root / WNIDS[1] / ADDED[0], root / ".ipynb_checkpoints")
    return root


def _expected_items(root: Path) -> list[tuple[Path, int]]:
    """(path, label) of the images under ``root``'s class folders in sorted order, found independently."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))  # hidden: no class
    return [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in (".jpeg", ".jpg", ".png", ".webp") and not path.name.startswith(".")
    ]


# --- the split, a pure function ---------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "valid_pct", "seed"), [(303, 0.2, 42), (10, 0.2, 0), (1000, 0.25, 7), (7, 0.5, 42)])
def test_random_split_is_fastais_random_splitter(n: int, valid_pct: float, seed: int) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train, valid = random_split(n, valid_pct, seed)
    assert torch.equal(torch.get_rng_state(), before)  # a private generator: the global stream is untouched
    theirs = RandomSplitter(valid_pct, seed=seed)(list(range(n)))  # seeds the global stream, then randperm
    assert (train, valid) == (list(theirs[0]), list(theirs[1]))
    assert len(valid) == int(valid_pct * n) and sorted(train + valid) == list(range(n))


def test_random_split_is_the_same_in_another_process() -> None:
    code = (
        "import torch; torch.manual_seed(99); torch.set_num_threads(1); torch.rand(5);"
        "from imagenette_sota.data.split import random_split; print(random_split(303, 0.2, 42))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str(random_split(303, 0.2, 42))


@pytest.mark.parametrize(
    ("n", "valid_pct", "message"),
    [
        (300, 0.0, r"valid_pct=0.0 must be in \(0, 1\)"),
        (300, 1.0, r"valid_pct=1.0 must be in \(0, 1\)"),
        (4, 0.2, "valid_pct=0.2 of 4 image.s. holds out no image: raise valid_pct or add images"),
    ],
)
def test_impossible_splits_are_refused(n: int, valid_pct: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_split(n, valid_pct, 42)


# --- formats ----------------------------------------------------------------------------------------------
def test_every_format_in_any_case_decodes_to_its_pixels(mini_dir: Path, tmp_path: Path) -> None:
    src = np.asarray(Image.open(sorted((mini_dir / "val" / WNIDS[5]).iterdir())[0]).convert("RGB"))
    img, other = Image.fromarray(src), Image.fromarray(255 - src)
    folder = tmp_path / "formats" / "one class"
    folder.mkdir(parents=True)
    img.save(folder / "a.PNG")
    img.save(folder / "b.Bmp")
    img.save(folder / "c.TIFF", save_all=True, append_images=[other])  # two pages: the first is the image
    img.save(folder / "d.tif")
    img.save(folder / "e.webp", lossless=True)
    img.save(folder / "f.JPG", quality=95)
    img.save(folder / "g.jpeg", quality=95)
    img.save(folder / "h.GIF", save_all=True, append_images=[other], duration=100)  # animated: the first frame
    (folder / "i.svg").write_text("<svg/>")
    items, skipped = scan_classes(folder.parent, ["one class"])
    assert [p.name[0] for p, _ in items] == list("abcdefgh") and [p.name for p in skipped] == ["i.svg"]
    decoded = {p.name[0]: np.asarray(open_rgb(p, max(src.shape))) for p, _ in items}  # no draft scaling
    for lossless in "abcde":
        assert np.array_equal(decoded[lossless], src), lossless
    for lossy in "fg":
        assert np.abs(decoded[lossy].astype(int) - src).mean() < 3
    gif_first = np.asarray(Image.open(folder / "h.GIF").convert("RGB"))  # PIL's 256-colour palette of frame 0
    assert np.array_equal(decoded["h"], gif_first) and np.abs(gif_first.astype(int) - src).mean() < 12
    assert find_layout(folder.parent) == "classes"


# --- full-size photos at presize 460 ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ten full-size photos, one folder per Imagenette class (wnid)."""
    archive = PHOTOS_ARCHIVE
    if not archive.is_file():
        pytest.fail(f"{archive} is missing: set IMAGENETTE_SHARED_DATA to the folder holding it")
    root = tmp_path_factory.mktemp("fullsize")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "imagenet-samples"


def test_full_size_photos_presize_to_460_like_fastais_resize(photos: Path) -> None:
    paths = sorted(photos.rglob("*.JPEG"))
    sizes = {p.name.split("_", 1)[1][:-5]: Image.open(p).size for p in paths}
    assert sizes["golf_ball"] == (169, 240) and sizes["parachute"] == (640, 426)  # portrait and landscape
    for path in paths:
        w, h = Image.open(path).size
        assert open_rgb(path, 460).size == (w, h)  # none is 2x the presize: decoded whole, upsampled to 460
        x, _ = PresizedImages([(path, 0)], 460, train=False)[0]
        assert x.shape == (3, 460, 460)
        # fastai's Resize(460) on the validation set: the same centre crop and resample, to a mean of < 0.2 grey
        # levels (single pixels up to 31 apart where fastai's float crop box rounds another way). The
        # exception: fastai computes the crop as int(511 / 460 * 460) = 510 rows of the 613x511 garbage truck.
        theirs = torch.from_numpy(np.asarray(Resize(460)(PILImage.create(path), split_idx=1))).permute(2, 0, 1)
        difference = (x.float() - theirs.float()).abs().mean()
        assert difference < (8 if "garbage_truck" in path.name else 0.25), path.name
        if Image.open(path).mode == "L":
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_large_photos_decode_reduced_when_the_presize_allows(photos: Path) -> None:
    for path in sorted(photos.rglob("*.JPEG")):
        full = Image.open(path).convert("RGB")
        reduced = open_rgb(path, 128)  # JPEG DCT scaling: 1/2 still covers 128 px when the short side is >= 256
        scale = 2 if min(full.size) >= 256 else 1
        assert reduced.size == (-(-full.width // scale), -(-full.height // scale)), path.name
        # DCT scaling is a 2x2 box average of the full decode, done inside the decoder: the same pixels
        a = np.asarray(presize(reduced, 128, (0.5, 0.5)), dtype=np.float32)
        b = np.asarray(presize(full.reduce(scale), 128, (0.5, 0.5)), dtype=np.float32)
        assert np.abs(a - b).mean() < 0.5, path.name


def test_full_size_photos_train_through_the_cli_at_presize_460(photos: Path, tmp_path: Path) -> None:
    args = ["--data.root", str(photos), "--data.presize", "460", "--data.train_size", "64", "--data.batch_size", "4"]
    run = cli(
        ["fit", "--config", QUICK, *args, "--data.num_workers", "0", *quiet(tmp_path), "--trainer.fast_dev_run", "1"]
    )
    dm = run.datamodule
    assert (
        dm.images.layout == "classes" and dm.classes == WNIDS and dm.class_names == HUMAN
    )  # an official release's wnids
    assert (len(dm.train_set), len(dm.val_set)) == (8, 2) and run.trainer.global_step == 1
    x, _ = dm.train_set[(0, 1)]
    assert x.shape == (3, 460, 460)


# --- your own class folders through the CLI ---------------------------------------------------------------
def test_class_folders_train_and_validate_on_one_recorded_split(
    own: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    fit = ["fit", "--config", QUICK, *small(own), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        run = cli([*fit, *limits])
    dm, expected = run.datamodule, _expected_items(own)
    assert dm.classes == sorted([UNICODE_CLASS, *WNIDS[1:]]) and dm.class_names == dm.classes  # folder names
    assert run.model.hparams.num_classes == 10 and len(expected) == 303
    train, val = dm.train_set.items, dm.val_set.items
    assert (len(train), len(val)) == (243, 60) and set(train).isdisjoint(val) and set(train) | set(val) == set(expected)
    theirs = RandomSplitter(0.2, seed=42)(expected)  # fastai's splitter on the same sorted file list
    assert (train, val) == ([expected[i] for i in theirs[0]], [expected[i] for i in theirs[1]])
    assert {p.name for p, _ in train + val} >= set(ADDED)
    assert all(dm.classes[label] == path.parent.name for path, label in train + val)
    assert caplog.text.count("skipped") == 1
    assert f"{own}: skipped 3 file(s) that are hidden or not" in caplog.text
    assert ".DS_Store" in caplog.text and ".ipynb_checkpoints" not in caplog.text

    (ckpt,) = (tmp_path / "logs").rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["ImagenetteDataModule"]
    digest = file_digest(expected, own)
    assert state["split"] == {"split": "random", "valid_pct": 0.2, "seed": 42, "files": 303, "digest": digest}
    assert state["classes"] == state["class_names"] == dm.classes

    # validate asked for another fraction: the checkpoint's split is used, and the difference said
    caplog.clear()
    validate = ["validate", "--config", QUICK, *small(own), *quiet(tmp_path), "--trainer.limit_val_batches", "1"]
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        again = cli([*validate, "--data.valid_pct", "0.5", "--ckpt_path", str(ckpt)])
    assert again.datamodule.val_set.items == val and again.datamodule.images.splitter.valid_pct == 0.2
    assert "trained with split=random, valid_pct=0.2, split_seed=42: using those instead of" in caplog.text

    # the folder changed since: that split cannot be reproduced, and validate says so
    extra = own / WNIDS[6] / "added later.png"
    shutil.copy(own / WNIDS[1] / ADDED[0], extra)
    try:
        err = rejected([*validate, "--ckpt_path", str(ckpt)], capsys)
    finally:
        extra.unlink()
    assert "data.root" in err and f"root={own}: the 304 images there are not the 303 the checkpoint's" in err
    assert "point root at the images the checkpoint was trained on" in err


def test_book_random_split_pools_the_release_stable_and_disjoint(mini_dir: Path, tmp_path: Path) -> None:
    base, overlay = (yaml.safe_load(Path(path).read_text())["data"] for path in (BOOK_BASE, BOOK))
    data = {**base, **overlay}  # the overlay on the chapter's base
    assert data["split"] == "random" and data["valid_pct"] == 0.2
    assert data["dataset"] == "imagenette2" and data["presize"] == 460
    tiny = ["--model.backbone", "imagenette_sota.models.xresnet18", *small(mini_dir), *quiet(tmp_path)]
    run = cli(["fit", "--config", BOOK_BASE, "--config", BOOK, *tiny, "--trainer.fast_dev_run", "1"])
    dm = run.datamodule
    pooled = [item for split in ("train", "val") for item in _expected_items(mini_dir / split)]
    train, val = dm.train_set.items, dm.val_set.items
    assert (len(train), len(val)) == (240, 60) and set(train).isdisjoint(val) and set(train) | set(val) == set(pooled)
    assert {p.parts[-3] for p, _ in val} == {"train", "val"}  # pooled: both folders give validation images
    theirs = RandomSplitter(0.2, seed=42)(pooled)
    assert val == [pooled[i] for i in theirs[1]]
    again = ImagenetteDataModule(root=mini_dir, split="random", batch_size=10)
    again.setup()
    assert (again.train_set.items, again.val_set.items) == (train, val)  # stable
    official = ImagenetteDataModule(root=mini_dir, batch_size=10)  # the default stays the val/ folder
    official.setup()
    assert {p.parts[-3] for p, _ in official.val_set.items} == {"val"} and len(official.val_set) == 100


# --- DDP: every rank holds out the same images ------------------------------------------------------------
class SplitSeen(Callback):
    """Logs a number of each rank's validation split (from its file list): the min and max over the ranks."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        code = float(int(file_digest(dm.val_set.items, dm.data_dir)[:6], 16))  # < 2**24: exact in float32
        pl_module.log("split/min", code, reduce_fx="min", sync_dist=True)
        pl_module.log("split/max", code, reduce_fx="max", sync_dist=True)


class OtherCopyOnRank1(ImagenetteDataModule):
    """Rank 1 reads ``other``: another node's copy of the data that lacks a file."""

    def __init__(self, other: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.other = other

    def setup(self, stage: str | None = None) -> None:
        if self.trainer.global_rank == 1:
            self.root = Path(self.other)
        super().setup(stage)


def test_ddp_ranks_hold_out_the_same_images(own: Path, tmp_path: Path) -> None:
    settings = {"root": own, "presize": 32, "train_size": 32, "batch_size": 16, "num_workers": 0}
    model = ImagenetteClassifier(backbone=tiny_xresnet, num_classes=10)
    alone = ImagenetteDataModule(**settings)
    alone.setup()
    expected = float(int(file_digest(alone.val_set.items, own)[:6], 16))
    trainer = L.Trainer(callbacks=[SplitSeen(), Count()], **{**DDP, "strategy": "ddp_fork"})
    with deadline(TIMEOUT):
        metrics = trainer.validate(model, ImagenetteDataModule(**settings), verbose=False)[0]
    assert metrics["split/min"] == metrics["split/max"] == expected and metrics["seen/val"] == 60
    other = tmp_path / "other"
    shutil.copytree(own, other)
    (other / WNIDS[1] / ADDED[0]).unlink()
    dm = OtherCopyOnRank1(str(other), **settings)
    with deadline(TIMEOUT), pytest.raises(Exception, match="rank 1 sees other files than rank 0: give every node"):
        L.Trainer(**{**DDP, "strategy": "ddp_fork"}).validate(model, dm, verbose=False)
