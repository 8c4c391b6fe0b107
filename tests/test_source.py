"""The data module's parts on their own: the image source (one scan, one cache decision) and the batch transforms."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.cache import CachedImages
from imagenette_sota.data.dataset import PresizedImages
from imagenette_sota.data.normalization import Normalization
from imagenette_sota.data.source import ImageSource
from imagenette_sota.data.transforms import BatchTransforms, augment_generator


@pytest.fixture
def data(mini_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the mini dataset, without caches other tests built, with a stray file in train/."""
    root = Path(shutil.copytree(mini_dir, tmp_path / "mini", ignore=shutil.ignore_patterns(".presized")))
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def test_the_source_scans_once_until_a_checkpoint_split_is_loaded(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = ImageSource(root=data, cache=False)
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        source.prepare(presize=32)  # cache=False: fetches nothing (the folder is there), scans nothing
        assert "skipped" not in caplog.text
        first = source.items()
        train, val = source.datasets(presize=32)
        assert caplog.text.count("skipped 1 file") == 1  # one scan behind items() and datasets()
        assert isinstance(train, PresizedImages) and (train.items, val.items) == first
        assert source.load_state_dict({"split": source.state_dict()["split"]})
        source.items()
    assert caplog.text.count("skipped 1 file") == 2  # a loaded split is drawn again, from the files found
    assert not source.load_state_dict({"split": None})  # nothing recorded: nothing loaded


def test_the_cache_decision_is_made_once_and_rank_0s_wins(data: Path) -> None:
    source = ImageSource(root=data)  # cache=None: decided from the sizes
    decided = source.use_cache(300, 32)
    assert source.cache is decided  # the setting became the decision
    # Under DDP every rank takes rank 0's decision, whatever it decided itself.
    train, val = source.datasets(presize=32, workers=0, broadcast=lambda value, src: not decided)
    assert source.cache is (not decided)
    assert isinstance(train, CachedImages) is isinstance(val, CachedImages) is (not decided)


def test_batch_transforms_fit_batch_statistics_once_and_validate_without_randomness(mini_dir: Path) -> None:
    x = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8)
    transforms = BatchTransforms(None, Normalization("batch"))
    out = transforms.train(x, 32)
    assert out.shape == (8, 3, 32, 32) and transforms.normalization.fitted
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    mean = transforms.normalization.mean
    transforms.train(x.flip(0) // 2, 32)
    assert transforms.normalization.mean is mean  # fitted once, on the first batch
    assert torch.equal(transforms.val(x, 40), transforms.val(x, 40)) and transforms.val(x, 40).shape[-1] == 40
    dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32)  # the data module calls, not copies, them
    expected = dm.transforms.train(x, 32, augment_generator(0, 0, 0))
    assert torch.equal(dm.train_transform(x, augment_generator(0, 0, 0)), expected)
