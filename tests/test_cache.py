"""The decode-once presized cache: same pixels as decoding, built once, rebuilt when stale, atomic."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagenette_sota.data import ImagenetteDataModule, cache
from imagenette_sota.data.dataset import BadImageError, PresizedImages
from imagenette_sota.data.folders import scan_split


@pytest.fixture
def data(mini_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the mini dataset (the tests touch and add files), without caches other tests built there."""
    return Path(
        shutil.copytree(mini_dir, tmp_path / "imagenette2-160-mini", ignore=shutil.ignore_patterns(".presized"))
    )


def _items(data: Path, split: str = "val") -> list[tuple[Path, int]]:
    return scan_split(data / split, sorted(p.name for p in (data / "train").iterdir()))


def test_cached_pixels_match_decoding(data: Path) -> None:
    items = _items(data)
    decoded = PresizedImages(items, presize=64, train=False)
    cached = cache.CachedImages(cache.build(items, 64, data / ".presized" / "val"), items, train=False)
    assert len(cached) == len(decoded) and cached.targets == decoded.targets
    for i in range(0, len(items), 7):
        a, b = decoded[i][0], cached[i][0]
        assert b.shape == a.shape == (3, 64, 64) and b.dtype == torch.uint8
        # Resize-then-crop vs crop-then-resize: the same view up to a sub-pixel shift.
        assert (a.float() - b.float()).abs().mean() < 8


def test_train_crops_slide_and_portraits_come_back_upright(data: Path, tmp_path: Path) -> None:
    src = _items(data)[0][0]
    portrait = tmp_path / "portrait.png"
    Image.open(src).transpose(Image.Transpose.TRANSPOSE).save(portrait)  # 160 x 213: taller than wide
    items = [(src, 0), (portrait, 1)]
    path = cache.build(items, 48, tmp_path / "c")
    val = cache.CachedImages(path, items, train=False)
    # The portrait's centre view is the landscape's centre view, transposed back (up to JPEG draft decoding).
    assert (val[1][0].float() - val[0][0].transpose(1, 2).float()).abs().mean() < 3
    expected = PresizedImages([(portrait, 1)], presize=48, train=False)[0][0].float()
    assert (val[1][0].float() - expected).abs().mean() < 8
    train = cache.CachedImages(path, items, train=True)
    assert len({tuple(train[0][0][0, 0, :6].tolist()) for _ in range(20)}) > 1  # the crop position is random
    assert torch.equal(train[(1, 5)][0], train[(1, 5)][0])  # with the train sampler's seed: a function of it
    assert len({tuple(train[(1, s)][0][0, 0, :6].tolist()) for s in range(20)}) > 1


def test_built_once_and_rebuilt_when_a_source_changes(data: Path) -> None:
    items = _items(data)
    folder = data / ".presized" / "val"
    first = cache.build(items, 32, folder)
    mtime = first.stat().st_mtime_ns
    assert cache.build(items, 32, folder) == first and first.stat().st_mtime_ns == mtime
    os.utime(items[5][0], ns=(0, 0))  # a replaced source file
    second = cache.build(items, 32, folder)
    assert second != first and second.is_file()
    assert cache.build(items, 40, folder) not in (first, second)  # the presize is part of the key
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*"))


def test_a_failed_build_leaves_no_cache(data: Path) -> None:
    items = _items(data)
    items[3][0].write_bytes(b"not an image")
    folder = data / ".presized" / "val"
    with pytest.raises(BadImageError, match=items[3][0].name):
        cache.build(items, 32, folder)
    assert list(folder.iterdir()) == []
    path = cache.build(items, 32, folder, skip_bad=True)
    ds = cache.CachedImages(path, items, train=False)
    assert len(ds) == len(items) - 1 and ds.targets == [y for i, (_, y) in enumerate(items) if i != 3]


def test_data_module_with_cache(data: Path) -> None:
    plain = ImagenetteDataModule(root=data, presize=64, train_size=32, batch_size=16, num_workers=0)
    cached = ImagenetteDataModule(root=data, presize=64, train_size=32, batch_size=16, num_workers=0, cache=True)
    cached.prepare_data()
    assert sorted(p.name for p in (data / ".presized").iterdir()) == ["train", "val"]
    plain.setup()
    cached.setup()
    assert isinstance(cached.train_set, cache.CachedImages) and cached.train_set.targets == plain.train_set.targets
    x, y = next(iter(cached.val_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 3, 64, 64)
    assert np.array_equal(y.numpy(), np.array(plain.val_set.targets[:32]))
