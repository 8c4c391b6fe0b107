"""The data module on real Imagenette images, downloaded through the real code path from a loopback server."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from imagenette_sota import quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.catalog import RELEASES, class_names
from imagenette_sota.data.normalization import IMAGENET_MEAN
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier

from .helpers import MINI_MD5
from .test_download_faults import serve

WNIDS = list(class_names("imagenette2-160"))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ../shared/data; yields its base URL."""
    with serve() as url:
        yield url


@pytest.fixture(scope="module")
def downloaded(server: str, tmp_path_factory: pytest.TempPathFactory) -> ImagenetteDataModule:
    """The mini archive fetched over HTTP, verified and extracted by prepare_data, then set up."""
    dm = ImagenetteDataModule(
        root=tmp_path_factory.mktemp("dl"),
        url=f"{server}/imagenette2-160-mini.tgz",
        md5=MINI_MD5,
        presize=96,
        train_size=64,
        batch_size=16,
        num_workers=0,
        cache=False,  # these tests read the decoding path (PresizedImages); tests/test_cache.py covers the cache
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_official_releases_carry_urls_and_checksums() -> None:
    assert set(RELEASES) == {f"{n}{s}" for n in ("imagenette2", "imagewoof2") for s in ("", "-320", "-160")}
    r = RELEASES["imagenette2-160"]
    assert r.url == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
    assert r.md5 == "e793b78cc4c9e9a4ccc0c1155377a412"
    assert all(r.url.endswith(f"/{name}.tgz") and (r.md5 or r.head_md5) for name, r in RELEASES.items())
    assert ImagenetteDataModule().images.archive == r.url  # the default downloads the official archive
    assert len(class_names("imagewoof2")) == 10 and class_names("imagenette2")["n03028079"] == "church"


def test_download_counts_and_labels(downloaded: ImagenetteDataModule) -> None:
    dm = downloaded
    assert dm.classes == WNIDS and dm.num_classes == 10 and dm.class_names[0] == "tench"
    assert Counter(dm.train_set.targets) == dict.fromkeys(range(10), 20)
    assert Counter(dm.val_set.targets) == dict.fromkeys(range(10), 10)
    for path, label in dm.train_set.items + dm.val_set.items:
        assert path.parent.name == WNIDS[label]
    assert (dm.root / "imagenette2-160-mini.tgz").is_file()  # the verified archive is kept
    assert not list(dm.root.glob("*.part")) and not list(dm.root.glob(".*extracting*"))


def test_presize_shapes_and_crop_positions(downloaded: ImagenetteDataModule) -> None:
    x, y = downloaded.val_set[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.uint8 and isinstance(y, int)
    assert torch.equal(downloaded.val_set[0][0], x)  # validation is deterministic (centre crop)
    # Images are 213x160 here: the random crop slides horizontally, so repeated draws differ.
    assert len({tuple(downloaded.train_set[3][0][0, 0, :8].tolist()) for _ in range(20)}) > 1


def test_batches_cross_as_uint8_and_transform_on_the_device(downloaded: ImagenetteDataModule) -> None:
    x, y = next(iter(downloaded.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 96, 96) and y.dtype == torch.int64
    tx = downloaded.train_transform(x)
    vx, vy = downloaded.on_after_batch_transfer((x, y), 0)  # no trainer: the deterministic view
    assert tx.shape == vx.shape == (16, 3, 64, 64) and torch.equal(vy, y)
    assert not torch.equal(tx, vx)
    downloaded.val_size = 80
    assert downloaded.val_transform(x).shape == (16, 3, 80, 80)
    downloaded.val_size = None


def test_normalized_real_images_have_mean_zero_std_one(downloaded: ImagenetteDataModule) -> None:
    x = torch.stack([downloaded.val_set[i][0] for i in range(len(downloaded.val_set))])
    raw = x.float() / 255
    assert raw.mean() > 0.3 and 0.2 < raw.std() < 0.35  # before: pixels in [0, 1]
    out = downloaded.val_transform(x)  # ImageNet statistics on Imagenette: close to, not exactly, 0 / 1
    assert out.mean(dim=(0, 2, 3)).abs().max() < 0.3 and (out.std(dim=(0, 2, 3)) - 1).abs().max() < 0.3
    dm = ImagenetteDataModule(root=downloaded.data_dir, presize=96, train_size=64, normalize="batch")
    fitted = dm.train_transform(x)  # statistics from this very batch
    torch.testing.assert_close(fitted.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    assert dm.state_dict()["stats_fitted"] and dm.state_dict()["mean"] == dm.normalization.mean.tolist()


def test_seeded_runs_repeat(downloaded: ImagenetteDataModule) -> None:
    def first_batch() -> torch.Tensor:
        L.seed_everything(7)
        x, _ = next(iter(downloaded.train_dataloader()))
        return downloaded.train_transform(x)

    assert torch.equal(first_batch(), first_batch())


def test_existing_folder_and_root_are_used_without_download(downloaded: ImagenetteDataModule) -> None:
    dm = ImagenetteDataModule(root=downloaded.data_dir, url="http://127.0.0.1:9/nothing-here.tgz")
    dm.prepare_data()  # root already holds train/ and val/: nothing is fetched
    dm.setup()
    assert len(dm.train_set) == 200 and dm.data_dir == downloaded.data_dir


def test_a_foreign_file_named_like_the_archive_is_refused_not_deleted(server: str, tmp_path: Path) -> None:
    # e.g. the user's own mirror copy (another checksum) in the download folder: never ours to delete
    theirs = tmp_path / "imagenette2-160-mini.tgz"
    theirs.write_bytes(b"the user's own archive")
    dm = ImagenetteDataModule(root=tmp_path, url=f"{server}/imagenette2-160-mini.tgz", md5=MINI_MD5, cache=False)
    with pytest.raises(FileExistsError, match=r"imagenette2-160-mini.tgz is already there .* --data.url"):
        dm.prepare_data()
    assert theirs.read_bytes() == b"the user's own archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenette2-160-mini.tgz"]


def test_noisy_labels_follow_the_csv(downloaded: ImagenetteDataModule) -> None:
    dm = ImagenetteDataModule(root=downloaded.data_dir, noisy_labels=50)
    dm.setup()
    with open(downloaded.data_dir / "noisy_imagenette.csv", newline="") as f:
        rows = {r["path"]: r["noisy_labels_50"] for r in csv.DictReader(f)}
    changed = 0
    for path, label in dm.train_set.items:
        assert WNIDS[label] == rows[path.relative_to(dm.data_dir).as_posix()]
        changed += WNIDS[label] != path.parent.name
    assert changed > 20  # about half the labels are wrong at 50 %
    assert dm.val_set.targets == downloaded.val_set.targets  # validation keeps the true labels


def test_shuffle_and_crops_are_functions_of_seed_epoch_and_index(downloaded: ImagenetteDataModule) -> None:
    def order(epoch: int) -> list[tuple[int, int]]:
        loader = downloaded.train_dataloader()  # a fresh loader, as in a resumed run
        loader.sampler.set_epoch(epoch)  # what Lightning's fit loop calls at each epoch start
        return list(loader.sampler)  # (index, crop seed) pairs

    L.seed_everything(3)
    first = order(1)
    torch.rand(3)  # draws from the global streams change nothing
    assert order(1) == first and order(0) != first
    assert sorted(i for i, _ in order(2)) == list(range(len(downloaded.train_set)))  # one process: every image once
    epoch0, epoch1 = dict(order(0)), dict(first)
    assert all(epoch0[i] != epoch1[i] for i in range(20))  # another epoch, other crops
    key = (3, epoch1[3])
    crop = downloaded.train_set[key][0]
    torch.manual_seed(123)
    assert torch.equal(downloaded.train_set[key][0], crop)  # the seed fixes the crop
    assert len({tuple(downloaded.train_set[(3, s)][0][0, 0, :8].tolist()) for s in range(20)}) > 1


class Probe(L.Callback):
    """What the sanity check validates with, and the first training batch as the network receives it."""

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sanity = (trainer.datamodule.normalization.fitted, trainer.datamodule.normalization.mean.clone())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.first = batch[0]
        trainer.should_stop = True


def test_batch_statistics_are_fitted_before_the_sanity_check(downloaded: ImagenetteDataModule) -> None:
    # fastai's Normalize() fits on one training batch when the DataLoaders are built, before anything validates.
    dm = ImagenetteDataModule(
        root=downloaded.data_dir, presize=96, train_size=64, batch_size=16, num_workers=0, normalize="batch"
    )
    probe = Probe()
    model = ImagenetteClassifier(backbone=partial(XResNet, layers=(1, 1, 1, 1), widen=0.25), num_classes=10)
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=[probe],
    )
    trainer.fit(model, dm)
    fitted, mean = probe.sanity
    assert fitted and not torch.allclose(mean, torch.tensor(IMAGENET_MEAN))
    # Fitted on the very batch training starts with: that batch comes out with mean 0 and std 1 per channel.
    torch.testing.assert_close(probe.first.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(probe.first.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
