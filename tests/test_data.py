"""The data module on real Imagenette images, downloaded through the real code path from a loopback server."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import shutil
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from imagenette_sota.catalog import RELEASES, class_names
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.dataset import BadImageError, PresizedImages, collate_skipping
from imagenette_sota.download import ChecksumError, UnsafeArchiveError, extract

from .conftest import MINI_MD5, SHARED_DATA

WNIDS = list(class_names("imagenette2-160"))


class _TruncatingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files but, for paths under /cut/, announces the full length and hangs up halfway."""

    def do_GET(self) -> None:
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ../shared/data; yields its base URL."""
    handler = functools.partial(_TruncatingHandler, directory=str(SHARED_DATA))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


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
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_official_releases_carry_urls_and_checksums() -> None:
    assert set(RELEASES) == {f"{n}{s}" for n in ("imagenette2", "imagewoof2") for s in ("", "-320", "-160")}
    r = RELEASES["imagenette2-160"]
    assert r.url == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
    assert r.md5 == "e793b78cc4c9e9a4ccc0c1155377a412"
    assert all(r.url.endswith(f"/{name}.tgz") and (r.md5 or r.head_md5) for name, r in RELEASES.items())
    assert ImagenetteDataModule().source == r.url  # the default downloads the official archive
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
    assert dm.state_dict()["stats_fitted"] and dm.state_dict()["mean"] == dm.mean.tolist()


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


def test_bad_checksum_leaves_nothing(server: str, tmp_path: Path) -> None:
    dm = ImagenetteDataModule(root=tmp_path, url=f"{server}/imagenette2-160-mini.tgz", md5="0" * 32)
    with pytest.raises(ChecksumError, match="imagenette2-160-mini.tgz"):
        dm.prepare_data()
    assert _tree(tmp_path) == []


def test_interrupted_download_leaves_nothing_and_a_rerun_recovers(server: str, tmp_path: Path) -> None:
    cut = ImagenetteDataModule(root=tmp_path, url=f"{server}/cut/imagenette2-160-mini.tgz", md5=MINI_MD5)
    with pytest.raises(Exception, match=r"(?i)bytes|incomplete|read"):
        cut.prepare_data()
    assert _tree(tmp_path) == []
    dm = ImagenetteDataModule(root=tmp_path, url=f"{server}/imagenette2-160-mini.tgz", md5=MINI_MD5)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 200


def test_interrupted_extraction_is_cleaned_and_redone(tmp_path: Path) -> None:
    leftover = tmp_path / ".imagenette2-160-mini.extracting-deadbeef" / "imagenette2-160-mini" / "train"
    leftover.mkdir(parents=True)  # what a killed extraction leaves: never the final folder
    dm = ImagenetteDataModule(root=tmp_path, url=str(SHARED_DATA / "imagenette2-160-mini.tgz"), md5=MINI_MD5)
    dm.prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenette2-160-mini"]
    dm.setup()
    assert len(dm.val_set) == 100


def test_truncated_archive_leaves_no_dataset(tmp_path: Path) -> None:
    broken = tmp_path / "imagenette2-160-mini.tgz"
    broken.write_bytes((SHARED_DATA / "imagenette2-160-mini.tgz").read_bytes()[:500_000])
    root = tmp_path / "root"
    with pytest.raises(RuntimeError, match="cannot extract"):
        extract(broken, root, "imagenette2-160-mini")
    assert _tree(root) == []


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
    with pytest.raises(UnsafeArchiveError, match="evil"):
        extract(archive, root, "evil")
    assert _tree(root) == [] and not (tmp_path / "escaped.txt").exists()


def test_unknown_dataset_and_bad_folders_say_what_to_do(tmp_path: Path, mini_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*imagenette2-160"):
        ImagenetteDataModule(dataset="imagenet")
    with pytest.raises(ValueError, match="batch_size=0"):
        ImagenetteDataModule(batch_size=0)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        ImagenetteDataModule(root=tmp_path / "nowhere").setup()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImagenetteDataModule(root=tmp_path, url=str(tmp_path / "missing.tgz")).prepare_data()
    data = tmp_path / "copy"
    shutil.copytree(mini_dir, data)
    shutil.rmtree(data / "val" / WNIDS[3])
    with pytest.raises(FileNotFoundError, match=f"lacks class folder.*{WNIDS[3]}"):
        ImagenetteDataModule(root=data).setup()
    (data / "val" / WNIDS[3]).mkdir()
    with pytest.raises(FileNotFoundError, match=f"{WNIDS[3]} holds no images"):
        ImagenetteDataModule(root=data).setup()


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


@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "palette_png_named_jpeg", "rgba_webp", "16bit_png"])
def test_awkward_but_valid_images_become_rgb(mini_dir: Path, tmp_path: Path, kind: str) -> None:
    src = next((mini_dir / "val" / WNIDS[0]).iterdir())
    path = _variant(src, tmp_path / f"{kind}.JPEG" if kind != "rgba_webp" else tmp_path / "a.webp", kind)
    x, label = PresizedImages([(path, 4)], presize=48, train=True)[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.uint8 and label == 4
    assert x.float().mean() > 20  # real content survived (16-bit is scaled, not clipped to white or black)
    if kind in ("grayscale", "16bit_png"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "random_bytes"])
def test_corrupt_images_name_the_file_or_are_skipped(mini_dir: Path, tmp_path: Path, kind: str) -> None:
    good = sorted((mini_dir / "val" / WNIDS[1]).iterdir())[:3]
    bad = _variant(good[0], tmp_path / f"{kind}.JPEG", kind)
    items = [(good[1], 1), (bad, 1), (good[2], 1)]
    with pytest.raises(BadImageError, match=f"{kind}.JPEG.*skip_bad_images=True"):
        PresizedImages(items, presize=32, train=False)[1]
    ds = PresizedImages(items, presize=32, train=False, skip_bad_images=True)
    x, y = collate_skipping([ds[i] for i in range(3)])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 1] and ds.skipped == 1


def test_shuffle_is_a_function_of_seed_and_epoch(downloaded: ImagenetteDataModule) -> None:
    def order(epoch: int) -> list[int]:
        loader = downloaded.train_dataloader()  # a fresh loader, as in a resumed run
        loader.sampler.set_epoch(epoch)  # what Lightning's fit loop calls at each epoch start
        return list(loader.sampler)

    L.seed_everything(3)
    assert order(1) == order(1) and order(0) != order(1)
    assert sorted(order(2)) == list(range(len(downloaded.train_set)))  # one process: every image once


def test_batch_larger_than_the_training_set_is_refused(downloaded: ImagenetteDataModule) -> None:
    with pytest.raises(ValueError, match="batch_size=201 is more than the 200 training images"):
        ImagenetteDataModule(root=downloaded.data_dir, batch_size=201).setup()
