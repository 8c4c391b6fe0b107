"""Shared fixtures: the real Imagenette archives in ../shared/data, extracted once per session."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch

from imagenette_sota import quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import xresnet18
from imagenette_sota.module import ImagenetteClassifier

from .helpers import MINI_ARCHIVE, PHOTOS_ARCHIVE


@pytest.fixture(scope="session")
def mini_archive() -> Path:
    """The 300-image archive (20 train + 10 val images per class); tests/helpers.py refuses to load without it."""
    return MINI_ARCHIVE


@pytest.fixture(scope="session")
def mini_root(mini_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the extracted mini archive: <root>/imagenette2-160-mini/{train,val}."""
    root = tmp_path_factory.mktemp("data")
    with tarfile.open(mini_archive) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="session")
def mini_dir(mini_root: Path) -> Path:
    """The extracted mini dataset folder itself."""
    return mini_root / "imagenette2-160-mini"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small steps: two per process on 2 shared cores stall on OpenMP's barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The 10 full-size ImageNet photos (one per Imagenette class, one grayscale), sorted by class."""
    if not PHOTOS_ARCHIVE.is_file():
        pytest.fail(f"{PHOTOS_ARCHIVE} is missing: set IMAGENETTE_SHARED_DATA to the folder holding it")
    root = tmp_path_factory.mktemp("photos")
    with tarfile.open(PHOTOS_ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return sorted((root / "imagenet-samples").glob("*/*.JPEG"))


@pytest.fixture(scope="session")
def tiny_ckpt(mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of 6 xresnet18 steps on the mini archive (presize 64, 32 px), shared by the session."""
    L.seed_everything(0, verbose=False)
    dm = ImagenetteDataModule(root=mini_dir, presize=64, train_size=32, batch_size=32, num_workers=0)
    trainer = quiet.trainer(accelerator="cpu", max_steps=6, limit_val_batches=0)
    trainer.fit(ImagenetteClassifier(backbone=xresnet18, num_classes=dm.num_classes), dm)
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path
