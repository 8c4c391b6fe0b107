"""Shared fixtures: the real Imagenette archives in ../shared/data, extracted once per session."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The archives beside the repository (../shared/data; IMAGENETTE_SHARED_DATA overrides) and their checksums.
from benchmarks.common import FULL_ARCHIVE, FULL_MD5, MINI_ARCHIVE, MINI_MD5, PHOTOS_ARCHIVE, SHARED_DATA  # noqa: F401


@pytest.fixture(scope="session")
def mini_archive() -> Path:
    """Path of the 300-image archive (20 train + 10 val images per class)."""
    if not MINI_ARCHIVE.is_file():
        pytest.fail(f"{MINI_ARCHIVE} is missing: set IMAGENETTE_SHARED_DATA to the folder holding it")
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
    """One intra-op thread for a module of small steps: two per process on 2 shared cores slow them up to 20x."""
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
    """A real checkpoint of a few xresnet18 steps on the mini archive (presize 64, 32 px), shared by the session."""
    from benchmarks.common import tiny_checkpoint

    return tiny_checkpoint(mini_dir, tmp_path_factory.mktemp("tiny") / "tiny.ckpt", steps=6)
