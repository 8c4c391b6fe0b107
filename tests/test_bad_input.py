"""Bad input, one test per kind: a clear error naming the file or value and the fix, or a logged, counted skip.

Built from the real mini images (copies corrupted in tmp_path). Outcomes:

| kind | outcome |
| --- | --- |
| zero-byte, truncated, random-bytes ``.JPEG`` | ``BadImageError`` naming the file and the fix; or skipped, logged |
| PNG named ``.JPEG``, grayscale, CMYK, 16-bit PNG, RGBA WebP | decoded by content (not name) to 8-bit RGB |
| huge JPEG, 10000x10000 | DCT draft scaling decodes it at 1250x1250, then the presize: no full-size allocation |
| huge non-JPEG, over ``PIL.Image.MAX_IMAGE_PIXELS`` (or 2x) | ``BadImageError`` naming file, pixels, fix; or skipped |
| tiny image, 8x8 | upsampled to the presize |
| empty class folder (train or val) | ``FileNotFoundError`` naming the folder: add images or remove it |
| stray files: ``.DS_Store``, ``README.txt``, macOS ``._x.JPEG`` | skipped; a warning with their count and names |
| class folder missing from val / only in val | ``FileNotFoundError`` / ``ValueError`` naming the folder |
| noisy-label CSV row for a file that is not there | row ignored; a warning with the count of ignored rows |
| image without a CSV row; CSV without the column | ``KeyError`` naming file and CSV; ``ValueError`` naming the column |
| tar member with ``..``, absolute path, symlink, hardlink | ``UnsafeArchiveError``; nothing extracted |
| wrong checksum | ``ChecksumError`` naming the archive; the download is deleted |
| not a tar: HTML page served or saved as .tgz, truncated .tgz | ``BadArchiveError`` naming url or file; nothing kept |
| size <= 0 or not an int, noisy level or normalize unknown | ``ValueError`` naming the argument, at construction |
| train/val size above the presize | a warning: upsampled, set presize >= size |
| batch larger than the training set | ``ValueError`` at setup naming both numbers |
| unknown dataset, missing local archive, setup before prepare_data | ``ValueError`` / ``FileNotFoundError``, the fix |
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.catalog import class_names
from imagenette_sota.data.dataset import BadImageError, PresizedImages, collate_skipping, open_rgb
from imagenette_sota.data.download import BadArchiveError, ChecksumError, UnsafeArchiveError, extract

from .helpers import MINI_ARCHIVE
from .test_download_faults import serve

WNIDS = list(class_names("imagenette2-160"))
MINI = MINI_ARCHIVE.name


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a local server for ../shared/data (``/html/<f>`` answers with an HTML page)."""
    with serve() as url:
        yield url


@pytest.fixture
def data(mini_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the mini dataset."""
    return Path(shutil.copytree(mini_dir, tmp_path / "data"))


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _image(mini_dir: Path) -> Path:
    """A real 213x160 colour JPEG."""
    return sorted((mini_dir / "val" / WNIDS[1]).iterdir())[0]


# --- images ----------------------------------------------------------------------------------------------
def _variant(src: Path, dst: Path, kind: str) -> Path:
    """A real image rewritten as a particular kind of awkward file."""
    img = Image.open(src).convert("RGB")
    if kind == "grayscale":
        img.convert("L").save(dst, "JPEG")
    elif kind == "cmyk":
        img.convert("CMYK").save(dst, "JPEG")
    elif kind == "palette_png_named_jpeg":
        img.convert("P").save(dst, "PNG")
    elif kind == "rgba_webp":
        img.convert("RGBA").save(dst, "WEBP")
    elif kind == "16bit_png":
        Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(dst, "PNG")
    elif kind == "truncated":
        dst.write_bytes(src.read_bytes()[:2000])
    elif kind == "zero_bytes":
        dst.write_bytes(b"")
    elif kind == "random_bytes":
        dst.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    return dst


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "random_bytes"])
def test_corrupt_images_name_the_file_or_are_skipped(
    mini_dir: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = sorted((mini_dir / "val" / WNIDS[1]).iterdir())[:3]
    bad = _variant(good[0], tmp_path / f"{kind}.JPEG", kind)
    items = [(good[1], 1), (bad, 1), (good[2], 1)]
    with pytest.raises(BadImageError, match=f"{kind}.JPEG: cannot decode image .*skip_bad_images=True"):
        PresizedImages(items, presize=32, train=False)[1]
    ds = PresizedImages(items, presize=32, train=False, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        x, y = collate_skipping([ds[i] for i in range(3)])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 1] and ds.skipped == 1
    assert str(bad) in caplog.text


@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "palette_png_named_jpeg", "rgba_webp", "16bit_png"])
def test_awkward_but_valid_images_become_rgb(mini_dir: Path, tmp_path: Path, kind: str) -> None:
    src = next((mini_dir / "val" / WNIDS[0]).iterdir())
    path = _variant(src, tmp_path / f"{kind}.JPEG" if kind != "rgba_webp" else tmp_path / "a.webp", kind)
    x, label = PresizedImages([(path, 4)], presize=48, train=True)[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and label == 4
    assert x.float().mean() > 20  # real content survived (16-bit is scaled, not clipped to white or black)
    if kind in ("grayscale", "16bit_png"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def _memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def test_huge_jpeg_decodes_draft_scaled_without_the_full_image(tmp_path: Path) -> None:
    path = tmp_path / "huge.JPEG"
    Image.new("RGB", (10_000, 10_000), (200, 30, 40)).save(path, quality=50)  # 100 M pixels, over PIL's warning
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak mark: measure the decode alone
    before = _memory_kib("VmRSS")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # what is decoded is small: no warning
        assert open_rgb(path, 160).size == (1250, 1250)  # 1/8 DCT scaling, the most that still covers 160 px
        x, _ = PresizedImages([(path, 0)], presize=160, train=False)[0]
    assert x.shape == (3, 160, 160)
    assert (x.float().mean(dim=(1, 2)) - torch.tensor([200.0, 30.0, 40.0])).abs().max() < 4
    assert _memory_kib("VmHWM") - before < 64 * 1024  # decoded at full size it would take 400 MB (RGBX)


@pytest.mark.parametrize("limit", [6000, 4000])  # 10000 pixels: PIL itself only warns at 6000, refuses at 4000
def test_image_over_the_pixel_limit_is_named_or_skipped(
    mini_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    path = tmp_path / "big.png"
    Image.open(_image(mini_dir)).convert("RGB").resize((100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # a small stand-in for PIL's 89 M pixels
    with pytest.raises(BadImageError) as raised:
        PresizedImages([(path, 0)], presize=32, train=False)[0]
    assert f"{path}: too large to decode safely (Image size (10000 pixels" in str(raised.value)
    assert f"exceeds limit of {limit if limit == 6000 else 2 * limit} pixels" in str(raised.value)
    assert "Downscale the file, raise PIL.Image.MAX_IMAGE_PIXELS" in str(raised.value)
    ds = PresizedImages([(path, 0)], presize=32, train=False, skip_bad_images=True)
    assert ds[0] is None and ds.skipped == 1


def test_tiny_image_is_upsampled_to_the_presize(mini_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.JPEG"
    Image.open(_image(mini_dir)).convert("RGB").resize((8, 8)).save(path)
    x, _ = PresizedImages([(path, 0)], presize=64, train=True)[0]
    assert x.shape == (3, 64, 64)
    colour = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
    assert (x.float().mean(dim=(1, 2)) - torch.from_numpy(colour)).abs().max() < 3


# --- folders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_class_folder_is_named(data: Path, split: str) -> None:
    for image in (data / split / WNIDS[3]).iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match=f"{split}/{WNIDS[3]} holds no images: add images or remove the"):
        ImagenetteDataModule(root=data).setup()


def test_stray_files_are_skipped_and_counted(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    (data / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "train" / WNIDS[0] / "README.txt").write_text("where these came from")
    fork = data / "train" / WNIDS[5] / "._ILSVRC2012_val_00000001.JPEG"  # macOS metadata, not an image
    fork.write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    dm = ImagenetteDataModule(root=data)
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (200, 100)
    assert (
        f"{data / 'train'}: skipped 3 file(s) that are hidden or not .jpeg/.jpg/.png/.webp/.bmp/.tif/.tiff/.gif images "
        f"(e.g. .DS_Store, {WNIDS[0]}/README.txt, {WNIDS[5]}/{fork.name})"
    ) in caplog.text
    assert "val: skipped" not in caplog.text


def test_class_folder_missing_from_val_is_named(data: Path) -> None:
    shutil.rmtree(data / "val" / WNIDS[3])
    with pytest.raises(FileNotFoundError, match=rf"val lacks class folder\(s\) \['{WNIDS[3]}'\]: every split needs"):
        ImagenetteDataModule(root=data).setup()


def test_class_folder_only_in_val_is_named(data: Path) -> None:
    shutil.rmtree(data / "train" / WNIDS[3])
    with pytest.raises(ValueError, match=rf"val has class folder\(s\) \['{WNIDS[3]}'\] that the training split does"):
        ImagenetteDataModule(root=data).setup()


# --- noisy labels ----------------------------------------------------------------------------------------
def test_noisy_rows_for_missing_files_are_ignored_and_counted(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = sorted((data / "train" / WNIDS[2]).iterdir())[:2]
    for path in gone:
        path.unlink()
    dm = ImagenetteDataModule(root=data, noisy_labels=5)
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        dm.setup()
    assert len(dm.train_set) == 198
    rows = ", ".join(f"train/{WNIDS[2]}/{p.name}" for p in gone)
    assert f"ignored 2 row(s) for training images that are not in {data / 'train'} (e.g. {rows})" in caplog.text


def test_image_without_a_noisy_row_is_named(data: Path) -> None:
    shutil.copy(_image(data), data / "train" / WNIDS[2] / "extra.JPEG")
    with pytest.raises(KeyError, match=f"noisy_imagenette.csv has no row for train/{WNIDS[2]}/extra.JPEG: use the"):
        ImagenetteDataModule(root=data, noisy_labels=5).setup()


def test_csv_without_the_noise_column_is_named(data: Path) -> None:
    csv_path = data / "noisy_imagenette.csv"
    csv_path.write_text("\n".join(line.split(",")[0] for line in csv_path.read_text().splitlines()))
    with pytest.raises(ValueError, match=r"noisy_imagenette.csv lacks column\(s\) \['noisy_labels_25'\]"):
        ImagenetteDataModule(root=data, noisy_labels=25).setup()


# --- archives --------------------------------------------------------------------------------------------
def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("evil/ok.txt")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_members_are_refused(tmp_path: Path, kind: str) -> None:
    member = tarfile.TarInfo(
        {"dotdot": "evil/../../escaped.txt", "absolute": "/tmp/escaped.txt"}.get(kind, "evil/link")
    )
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        member.type, member.linkname = tarfile.LNKTYPE, "evil/ok.txt"
    archive = tmp_path / "evil.tgz"
    _tar_with(archive, member)
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError, match="evil.tgz: refusing to extract: .*unsafe; do not use it"):
        extract(archive, root, "evil")
    assert _tree(root) == [] and not (tmp_path / "escaped.txt").exists()


def test_wrong_checksum_deletes_the_download(server: str, tmp_path: Path) -> None:
    dm = ImagenetteDataModule(root=tmp_path, url=f"{server}/{MINI}", md5="0" * 32)
    with pytest.raises(ChecksumError, match=f"{MINI}: md5 .*, expected 0{{32}}.*delete it and download again"):
        dm.prepare_data()
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("kind", ["html_served", "html_saved", "truncated"])
def test_file_that_is_not_a_tar_archive_is_named(server: str, tmp_path: Path, kind: str) -> None:
    html = b"<!DOCTYPE html><html><body><h1>Service unavailable</h1></body></html>"
    mirror = tmp_path / "mirror" / MINI
    mirror.parent.mkdir()
    mirror.write_bytes(html if kind == "html_saved" else MINI_ARCHIVE.read_bytes()[:500_000])
    url = f"{server}/html/{MINI}" if kind == "html_served" else str(mirror)
    root = tmp_path / "root"
    with pytest.raises(BadArchiveError) as raised:
        ImagenetteDataModule(root=root, url=url).prepare_data()  # no md5: nothing but the format can tell
    if kind == "html_served":
        assert f"{url} sent {len(html)} bytes of 'text/html' starting b'<!DOCTYPE html>" in str(raised.value)
        assert "not a tar archive (an error or login page?): check the url" in str(raised.value)
    else:
        assert f"{mirror}: cannot extract (" in str(raised.value)
        assert "it is not a complete .tgz/.tar archive. Delete it and download it again" in str(raised.value)
    assert _tree(root) == []


# --- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("presize", 0),
        ("train_size", -8),
        ("val_size", 0),
        ("batch_size", 0),
        ("val_batch_size", -1),
        ("num_workers", -1),
        ("train_size", 128.0),
        ("presize", "160"),
        ("batch_size", True),
    ],
)
def test_impossible_sizes_are_refused_at_construction(argument: str, value: Any) -> None:
    what = "an integer >= 0" if argument == "num_workers" else "a positive integer"
    with pytest.raises(ValueError, match=rf"^{argument}={re.escape(repr(value))} must be {what}$"):
        ImagenetteDataModule(**{argument: value})


def test_unknown_choices_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"noisy_labels=3: choose one of \(0, 1, 5, 25, 50\)"):
        ImagenetteDataModule(noisy_labels=3)
    with pytest.raises(ValueError, match="normalize='zscore': choose 'imagenet', 'batch' or 'none'"):
        ImagenetteDataModule(normalize="zscore")
    with pytest.raises(
        ValueError, match="dataset='imagenet' is not an official release: choose one of .*imagenette2-160"
    ):
        ImagenetteDataModule(dataset="imagenet")


def test_sizes_above_the_presize_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        ImagenetteDataModule(presize=96, train_size=64, val_size=128)
    assert "presized to 96 px, then upsampled to 128 px: set presize >= 128" in caplog.text


def test_batch_larger_than_the_training_set_is_refused(mini_dir: Path) -> None:
    with pytest.raises(ValueError, match="batch_size=201 is more than the 200 training images .*use a smaller"):
        ImagenetteDataModule(root=mini_dir, batch_size=201).setup()


def test_missing_archive_or_dataset_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.tgz does not exist: check the url/path you gave"):
        ImagenetteDataModule(root=tmp_path, url=str(tmp_path / "missing.tgz")).prepare_data()
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        ImagenetteDataModule(root=tmp_path / "nowhere").setup()
