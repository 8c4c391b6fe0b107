"""The data module's machine-dependent defaults: the cache on when it fits (logged), workers that spare the cores."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenette_sota.data import ImagenetteDataModule, cache, defaults
from imagenette_sota.data.dataset import PresizedImages


@pytest.fixture
def data(mini_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the mini dataset without any cache built by other tests."""
    return Path(shutil.copytree(mini_dir, tmp_path / "mini", ignore=shutil.ignore_patterns(".presized")))


def test_cache_bytes_is_the_size_of_the_cache_file(data: Path) -> None:
    dm = ImagenetteDataModule(root=data, presize=40, batch_size=8, num_workers=0, cache=True)
    dm.prepare_data()
    files = sorted((data / ".presized").glob("*/*.npy"))
    pixels = sum(np.load(f, mmap_mode="r").nbytes for f in files)
    assert pixels == defaults.cache_bytes(300, 40) == 300 * 3 * 40 * 60


def test_cache_is_on_by_default_when_it_fits_and_says_how_to_turn_it_off(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        dm = ImagenetteDataModule(root=data, presize=48, train_size=32, batch_size=8, num_workers=0)
        dm.prepare_data()
        dm.setup("fit")
    assert isinstance(dm.train_set, cache.CachedImages) and isinstance(dm.val_set, cache.CachedImages)
    assert sorted(p.name for p in (data / ".presized").iterdir()) == ["train", "val"]
    assert "decode-once cache on by default" in caplog.text and "--data.cache false" in caplog.text
    assert caplog.text.count("decode-once cache") == 1  # decided once, in prepare_data; setup reuses it


def test_cache_false_decodes_and_writes_nothing(data: Path) -> None:
    dm = ImagenetteDataModule(root=data, presize=48, train_size=32, batch_size=8, num_workers=0, cache=False)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.train_set, PresizedImages) and not (data / ".presized").exists()


def test_cache_stays_off_when_it_would_not_fit_in_memory(
    data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    need = defaults.cache_bytes(300, 48)
    monkeypatch.setattr(defaults, "available_memory", lambda: 2 * need - 1)  # just over half of it
    with caplog.at_level(logging.INFO):
        dm = ImagenetteDataModule(root=data, presize=48, train_size=32, batch_size=8, num_workers=0)
        dm.setup("fit")
    assert isinstance(dm.train_set, PresizedImages) and not (data / ".presized").exists()
    assert "decode-once cache off" in caplog.text and "--data.cache true" in caplog.text
    monkeypatch.setattr(defaults, "available_memory", lambda: 2 * need)
    assert defaults.cache_fits(300, 48, data)[0]


def test_cache_fits_counts_free_disk(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need = defaults.cache_bytes(1000, 128)
    monkeypatch.setattr(defaults, "free_disk", lambda folder: 2 * need - 1)
    fits, why = defaults.cache_fits(1000, 128, data)
    assert not fits and f"{need / 2**30:.2f} GiB for 1,000 images at presize 128" in why


def test_default_workers_leave_the_cpu_to_training() -> None:
    assert defaults.default_workers(cache=True, accelerated=False, cores=2) == 0
    assert defaults.default_workers(cache=False, accelerated=False, cores=2) == 1
    assert defaults.default_workers(cache=False, accelerated=False, cores=1) == 0
    assert defaults.default_workers(cache=True, accelerated=True, cores=16) == 16
    assert defaults.loader_workers(3, cached=True, device=torch.device("cpu")) == 3  # an explicit count stays


def test_prediction_decodes_inline_on_the_cpu_and_in_processes_for_an_accelerator() -> None:
    assert defaults.predict_workers(10_000, 64, accelerated=False, cores=16) == 0  # the network has every core
    assert defaults.predict_workers(10_000, 64, accelerated=True, cores=16) == 8
    assert defaults.predict_workers(10_000, 64, accelerated=True, cores=2) == 2
    assert defaults.predict_workers(4 * 64, 64, accelerated=True, cores=16) == 0  # too few batches to start them


def test_loaders_use_the_default_workers(data: Path) -> None:
    cached = ImagenetteDataModule(root=data, presize=48, train_size=32, batch_size=8)
    plain = ImagenetteDataModule(root=data, presize=48, train_size=32, batch_size=8, cache=False)
    for dm in (cached, plain):
        dm.prepare_data()
        dm.setup("fit")
    expected = {dm: defaults.default_workers(dm is cached, torch.cuda.is_available()) for dm in (cached, plain)}
    for dm, workers in expected.items():
        assert dm.train_dataloader().num_workers == dm.val_dataloader().num_workers == workers
    x, y = next(iter(cached.train_dataloader()))
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.uint8 and len(y) == 8
