"""Where a new user used to land in a traceback: one message naming the thing and the fix, exit status 2, and
nothing downloaded or written. Through the real command line (``cli()``; a subprocess for the offline case)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenette_sota.data.catalog import RELEASES, class_names

from .test_cli import QUICK, rejected, small
from .test_download_faults import serve

WNIDS = list(class_names("imagenette2-160"))

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _logs(tmp_path: Path) -> list[str]:
    """Where a run would write its logs, config.yaml and checkpoints: under ``tmp_path / 'logs'``."""
    return [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        "--trainer.default_root_dir",
        str(tmp_path / "logs"),
    ]


@pytest.mark.parametrize("present", ["train", "val"])
def test_root_with_one_split_folder_names_the_fix_and_downloads_nothing(
    mini_dir: Path, tmp_path: Path, present: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "mine"
    for wnid in WNIDS:
        (root / present).mkdir(parents=True, exist_ok=True)
        (root / present / wnid).symlink_to(mini_dir / present / wnid, target_is_directory=True)
    before = _tree(tmp_path)
    err = rejected(["fit", "--config", QUICK, *small(root), *_logs(tmp_path)], capsys)
    missing = "val" if present == "train" else "train"
    assert "data.root" in err and f"root={root} has {present}/ but no {missing}/: add {root / missing}/" in err
    assert f"or point root at {root / present} to use its class folders with a random validation split" in err
    assert _tree(tmp_path) == before


def test_root_with_folders_but_no_images_in_them_is_refused(mini_dir: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "nested"
    (root / "animals").mkdir(parents=True)
    (root / "animals" / "tench").symlink_to(mini_dir / "train" / WNIDS[0], target_is_directory=True)
    err = rejected(["fit", "--config", QUICK, *small(root), *_logs(tmp_path)], capsys)
    assert f"root={root} holds folders (animals/) but no images directly inside them" in err
    assert not (tmp_path / "logs").exists()


def test_missing_root_offline_names_the_url_and_the_offline_ways(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    proxy = "http://127.0.0.1:9"  # nothing listens there: every fetch fails as it does offline
    env = {**os.environ, "https_proxy": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "HTTP_PROXY": proxy}
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    args = ["fit", "--config", QUICK, "--data.root", str(root), *_logs(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "imagenette_sota", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    url = RELEASES["imagenette2-160"].url
    assert f"cannot reach {url} (" in done.stderr and "this machine may be offline" in done.stderr
    assert "--data.url /path/to/archive.tgz" in done.stderr and "--data.root" in done.stderr
    assert _tree(tmp_path) == []  # not even the root folder


def test_unreachable_url_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/imagenette2-160.tgz"
    args = ["--data.root", str(tmp_path / "data"), "--data.url", url, *_logs(tmp_path)]
    err = rejected(["fit", "--config", QUICK, *args], capsys)
    assert "data.url" in err and f"cannot reach {url} (" in err and "Connection refused" in err
    assert _tree(tmp_path) == []


def test_url_the_server_does_not_have_names_the_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve() as server:
        url = f"{server}/no-such-archive.tgz"
        err = rejected(
            ["fit", "--config", QUICK, "--data.root", str(tmp_path / "d"), "--data.url", url, *_logs(tmp_path)], capsys
        )
    assert f"{url} answered HTTP 404 File not found: check the url" in err
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("cycle.lr_max", "-1", "> 0"),
        ("cycle.lr_max", "0", "> 0"),
        ("weight_decay", "-0.01", ">= 0"),
        ("cycle.pct_start", "0", "in (0, 1)"),
        ("cycle.pct_start", "1", "in (0, 1)"),
        ("cycle.div", "0", "> 0"),
        ("cycle.div_final", "-1e5", "> 0"),
        ("label_smoothing", "1", "in [0, 1)"),
        ("label_smoothing", "-0.1", "in [0, 1)"),
        ("mixup_alpha", "-0.4", ">= 0"),
        ("cutmix_alpha", "-1", ">= 0"),
    ],
)
def test_module_numbers_are_checked_where_accepted(
    mini_dir: Path, tmp_path: Path, key: str, value: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = rejected(["fit", "--config", QUICK, *small(mini_dir), *_logs(tmp_path), f"--model.{key}={value}"], capsys)
    name = key.split(".")[-1]
    assert f"model.{key}" in err and f"{name}={float(value)!r} must be {allowed}" in err
    assert not (tmp_path / "logs").exists()


def test_data_split_settings_are_checked_where_accepted(mini_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = rejected(["fit", "--config", QUICK, *small(mini_dir), "--data.valid_pct", "1.5"], capsys)
    assert "data.valid_pct" in err and "valid_pct=1.5 must be in (0, 1)" in err
    err = rejected(
        ["fit", "--config", QUICK, *small(mini_dir), "--data.split", "random", "--data.noisy_labels", "5"], capsys
    )
    assert "noisy_labels=5 follows the official split: use --data.split folders" in err


@pytest.mark.parametrize("kind", ["missing", "text", "folder", "truncated"])
def test_ckpt_path_that_is_no_checkpoint_is_named(
    mini_dir: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "model.ckpt"
    if kind == "text":
        ckpt.write_text("epoch=4 val/acc=0.81\n")
    elif kind == "folder":
        ckpt.mkdir()
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    for subcommand in ("validate", "fit"):
        err = rejected(
            [subcommand, "--config", QUICK, *small(mini_dir), *_logs(tmp_path), "--ckpt_path", str(ckpt)], capsys
        )
        what = {"missing": "does not exist", "folder": "is a folder"}.get(
            kind, "is not a checkpoint (torch.save's format"
        )
        assert f"ckpt_path={ckpt}" in err and what in err and "give the .ckpt file a fit wrote" in err
    assert not (tmp_path / "logs").exists()


def test_a_legacy_format_checkpoint_is_not_refused_by_the_check(tmp_path: Path) -> None:
    from imagenette_sota.checkpoint_io import check_ckpt_path

    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}}, ckpt, _use_new_zipfile_serialization=False)
    check_ckpt_path(ckpt)
    check_ckpt_path("last")
