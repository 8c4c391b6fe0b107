"""Every user mistake in the README's list, through the real command line: exit status 2, one message naming the
file, key or value and the fix in the CLI's own spelling, no traceback, nothing written where the run would write.

Each case is a function of the shared ``World`` (real data, a real checkpoint, a local server) and its own folder,
returning the arguments of ``imagenette-sota`` and the phrases its message must hold. ``pytest -rP`` shows each
case's exit status and the first line of its message (the catalogue).
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from imagenette_sota.cli import main
from imagenette_sota.data.catalog import RELEASES, class_names

from .helpers import MINI_MD5
from .test_download_faults import serve

CONFIGS = Path(__file__).parents[1] / "configs"
QUICK = str(CONFIGS / "cpu_quick.yaml")
WNIDS = list(class_names("imagenette2-160"))

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class World:
    """What the cases share: the mini dataset, its archive, a fit's checkpoint, a photo and a local HTTP server."""

    mini_dir: Path
    mini_archive: Path
    ckpt: Path
    photo: Path
    server: str


@pytest.fixture(scope="module")
def world(mini_dir: Path, mini_archive: Path, tiny_ckpt: Path, photos: list[Path]) -> Iterator[World]:
    with serve() as url:
        yield World(mini_dir, mini_archive, tiny_ckpt, photos[0], url)


def fit(tmp: Path, root: Path, *extra: str, workers: bool = False) -> list[str]:
    """A quick fit on ``root`` writing under ``tmp / 'logs'``; ``workers``: the default DataLoader workers."""
    sizes = ["--data.presize", "48", "--data.train_size", "32", "--data.batch_size", "10"]
    logs = ["--trainer.logger.init_args.save_dir", str(tmp / "logs"), "--trainer.default_root_dir", str(tmp / "logs")]
    return ["fit", "--config", QUICK, "--data.root", str(root), *sizes, *logs, *([] if workers else WORKERS), *extra]


WORKERS = ["--data.num_workers", "0"]


def own_images(world: World, tmp: Path, broken: Callable[[Path], None] | None = None) -> Path:
    """A copy of the mini dataset as the user's folder, with one training image broken by ``broken``."""
    root = Path(shutil.copytree(world.mini_dir, tmp / "photos"))
    if broken is not None:
        broken(sorted((root / "train" / WNIDS[2]).iterdir())[3])
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def one_split(world: World, tmp: Path, present: str) -> Path:
    root = tmp / "mine"
    (root / present).mkdir(parents=True)
    for wnid in WNIDS:
        (root / present / wnid).symlink_to(world.mini_dir / present / wnid, target_is_directory=True)
    return root


def no_images(world: World, tmp: Path) -> Path:
    root = tmp / "nested"
    (root / "animals").mkdir(parents=True)
    (root / "animals" / "tench").symlink_to(world.mini_dir / "train" / WNIDS[0], target_is_directory=True)
    return root


def text_file(tmp: Path, name: str = "model.ckpt") -> Path:
    path = tmp / name
    path.write_text("epoch=4 val/acc=0.81\n")
    return path


def truncated_ckpt(world: World, tmp: Path) -> Path:
    path = tmp / "model.ckpt"
    path.write_bytes(world.ckpt.read_bytes()[:1000])
    return path


def foreign_ckpt(world: World, tmp: Path, backbone: str | dict) -> Path:
    """The fit's checkpoint claiming another backbone (a checkpoint from someone else)."""
    saved = torch.load(world.ckpt, weights_only=True)
    path = tmp / "foreign.ckpt"
    torch.save({**saved, "backbone": backbone}, path)
    return path


def not_lightning(tmp: Path) -> Path:
    path = tmp / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def html_archive(tmp: Path) -> Path:
    path = tmp / "mirror" / "imagenette2-160.tgz"
    path.parent.mkdir()
    path.write_text("<!DOCTYPE html><html><body>Service unavailable</body></html>")
    return path


Case = Callable[[World, Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {
    # --- settings (README: a bad setting ends with the key and the fix) ---------------------------------------
    "presize_zero": lambda w, t: (
        fit(t, w.mini_dir, "--data.presize", "0"),
        ["data.presize", "presize=0 must be a positive integer", "--data.presize"],
    ),
    "batch_size_negative": lambda w, t: (fit(t, w.mini_dir, "--data.batch_size", "-4"), ["data.batch_size"]),
    "size_not_a_number": lambda w, t: (fit(t, w.mini_dir, "--data.train_size", "big"), ["data.train_size", "int"]),
    "unknown_key": lambda w, t: (fit(t, w.mini_dir, "--data.no_such_key", "1"), ["--data.no_such_key"]),
    "unknown_dataset": lambda w, t: (fit(t, w.mini_dir, "--data.dataset", "imagenet"), ["data.dataset", "choose"]),
    "missing_config_file": lambda w, t: (["fit", "--config", str(t / "nope.yaml")], ["nope.yaml"]),
    "mixup_and_cutmix": lambda w, t: (
        fit(t, w.mini_dir, "--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "1"),
        ["model.mixup_alpha", "choose mixup or cutmix"],
    ),
    "lr_negative": lambda w, t: (fit(t, w.mini_dir, "--model.cycle.lr_max=-1"), ["model.cycle.lr_max", "> 0"]),
    "label_smoothing_one": lambda w, t: (
        fit(t, w.mini_dir, "--model.label_smoothing", "1"),
        ["model.label_smoothing", "in [0, 1)"],
    ),
    "valid_pct_above_one": lambda w, t: (fit(t, w.mini_dir, "--data.valid_pct", "1.5"), ["data.valid_pct"]),
    "cycles_without_max_epochs": lambda w, t: (
        fit(t, w.mini_dir, "--trainer.max_epochs=-1", "--trainer.max_steps", "1"),
        ["max_epochs=-1", "--trainer.max_epochs N"],
    ),
    "noisy_labels_random_split": lambda w, t: (
        fit(t, w.mini_dir, "--data.split", "random", "--data.noisy_labels", "5"),
        ["noisy_labels=5 follows the official split", "--data.split folders"],
    ),
    "unknown_command": lambda w, t: (["predict", "--config", QUICK], ["'predict' is not a command", "classify"]),
    # --- the user's folder ---------------------------------------------------------------------------------
    "root_train_only": lambda w, t: (
        fit(t, one_split(w, t, "train")),
        ["data.root", "has train/ but no val/", "--data.root"],
    ),
    "root_val_only": lambda w, t: (fit(t, one_split(w, t, "val")), ["has val/ but no train/"]),
    "root_without_images": lambda w, t: (fit(t, no_images(w, t)), ["holds folders (animals/) but no images"]),
    "truncated_jpeg": lambda w, t: (
        fit(t, own_images(w, t, truncate), workers=True),  # decoded in the cache builder's worker processes
        ["cannot decode image", "image file is truncated", "--data.skip_bad_images true"],
    ),
    "zero_byte_jpeg": lambda w, t: (
        fit(t, own_images(w, t, empty)),
        ["cannot decode image", "--data.skip_bad_images true"],
    ),
    # --- archives and downloads ----------------------------------------------------------------------------
    "url_missing_file": lambda w, t: (
        fit(t, t / "data", "--data.url", str(t / "nowhere.tgz")),
        ["data.url", "nowhere.tgz does not exist"],
    ),
    "md5_mismatch": lambda w, t: (
        fit(t, t / "data", "--data.url", str(w.mini_archive), "--data.md5", "0" * 32),
        [f"md5 {MINI_MD5}, expected {'0' * 32}", "--data.md5 ..."],
    ),
    "url_not_an_archive": lambda w, t: (
        fit(t, t / "data", "--data.url", str(html_archive(t))),
        ["cannot extract", "not a complete .tgz/.tar archive"],
    ),
    "url_unreachable": lambda w, t: (
        fit(t, t / "data", "--data.url", "http://127.0.0.1:9/imagenette2-160.tgz"),
        ["data.url", "cannot reach http://127.0.0.1:9/imagenette2-160.tgz", "Connection refused"],
    ),
    "url_not_found": lambda w, t: (
        fit(t, t / "data", "--data.url", f"{w.server}/no-such-archive.tgz"),
        ["answered HTTP 404", "check the url"],
    ),
    "offline": lambda w, t: (
        fit(t, t / "nowhere"),
        [f"cannot reach {RELEASES['imagenette2-160'].url}", "--data.url /path/to/archive.tgz"],
    ),
    # --- checkpoints for fit / validate / tta --------------------------------------------------------------
    "ckpt_path_missing": lambda w, t: (
        fit(t, w.mini_dir, "--ckpt_path", str(t / "model.ckpt")),
        ["ckpt_path=", "does not exist", "give the .ckpt file a fit wrote"],
    ),
    "ckpt_path_text": lambda w, t: (
        fit(t, w.mini_dir, "--ckpt_path", str(text_file(t))),
        ["is not a checkpoint (torch.save's format; this file starts with b'epoch=4"],
    ),
    "ckpt_path_folder": lambda w, t: (fit(t, w.mini_dir, "--ckpt_path", str(t)), ["is a folder"]),
    "ckpt_path_truncated": lambda w, t: (
        ["validate", *fit(t, w.mini_dir, "--ckpt_path", str(truncated_ckpt(w, t)))[1:]],
        ["is not a checkpoint"],
    ),
    "ckpt_of_another_backbone": lambda w, t: (
        [
            "tta",
            *fit(t, w.mini_dir, "--ckpt_path", str(w.ckpt), "--model.backbone", "imagenette_sota.models.xresnet34")[1:],
        ],
        ["does not fit this model", "Use the backbone"],
    ),
    # --- classify / export / serve -------------------------------------------------------------------------
    "classify_missing_checkpoint": lambda w, t: (
        ["classify", str(t / "run.ckpt"), str(w.photo)],
        ["run.ckpt does not exist", "give the .ckpt file a fit wrote"],
    ),
    "classify_text_as_checkpoint": lambda w, t: (
        ["classify", str(text_file(t, "notes.txt")), str(w.photo)],
        ["notes.txt is not a checkpoint (torch.save's format"],
    ),
    "classify_photo_as_checkpoint": lambda w, t: (
        ["classify", str(w.photo), str(w.photo)],
        [f"{w.photo} is not a checkpoint (torch.save's format; this file starts with b'\\xff\\xd8"],
    ),
    "classify_torch_file_not_a_checkpoint": lambda w, t: (
        ["classify", str(not_lightning(t)), str(w.photo)],
        ["weights.pt is a torch file but not a Lightning checkpoint"],
    ),
    "classify_untrusted_backbone": lambda w, t: (
        ["classify", str(foreign_ckpt(w, t, "os.system")), str(w.photo)],
        ["its backbone names os.system", "--trust os"],
    ),
    "classify_untrusted_argument": lambda w, t: (
        [
            "classify",
            str(
                foreign_ckpt(
                    w, t, {"class_path": "imagenette_sota.models.XResNet", "init_args": {"act": "subprocess.Popen"}}
                )
            ),
            str(w.photo),
        ],
        ["its backbone names subprocess.Popen", "--trust subprocess"],
    ),
    "classify_missing_folder": lambda w, t: (
        ["classify", str(w.ckpt), str(t / "no" / "such" / "dir")],
        ["no/such/dir: no such file or folder"],
    ),
    "classify_glob_matching_nothing": lambda w, t: (
        ["classify", str(w.ckpt), str(t / "*.jpg")],
        ["*.jpg: no file matches this glob"],
    ),
    "classify_missing_device": lambda w, t: (
        ["classify", str(w.ckpt), str(w.photo), "--device", "cuda:7"],
        ["--device cuda:7: not usable here", "--device cpu"],
    ),
    "classify_unknown_device": lambda w, t: (
        ["classify", str(w.ckpt), str(w.photo), "--device", "gpu"],
        ["--device gpu: not usable here"],
    ),
    "classify_bad_output_name": lambda w, t: (
        ["classify", str(w.ckpt), str(w.photo), "--output", str(t / "answers.txt")],
        ["end the name in .csv or .jsonl"],
    ),
    "classify_top_k_zero": lambda w, t: (["classify", str(w.ckpt), str(w.photo), "--top_k", "0"], ["--top_k"]),
    "export_missing_checkpoint": lambda w, t: (
        ["export", str(t / "run.ckpt"), str(t / "model")],
        ["run.ckpt does not exist"],
    ),
    "serve_text_as_checkpoint": lambda w, t: (
        ["serve", str(text_file(t)), "--port", "9"],
        ["model.ckpt is not a checkpoint"],
    ),
}


def run(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and everything printed (both streams) of ``imagenette-sota args``, a crash's traceback included."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except Exception:
        traceback.print_exc()  # what the interpreter prints for an uncaught error
        code = 1
    out, err = capfd.readouterr()
    return code, out + err


@pytest.mark.parametrize("name", CASES)
def test_every_mistake_ends_in_one_message_and_exit_2(
    name: str, world: World, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "offline":  # every fetch fails as it does without a network
        for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(variable, "http://127.0.0.1:9")
        monkeypatch.delenv("no_proxy", raising=False), monkeypatch.delenv("NO_PROXY", raising=False)
    args, phrases = CASES[name](world, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, output = run(args, capfd)
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    print(f"{name}: exit {code}: {errors[0] if errors else output.strip().splitlines()[0]}")  # the catalogue's row
    assert code == 2, output
    assert len(errors) == 1, output  # one message
    for phrase in phrases:
        assert phrase in output, (phrase, output)
    assert not (tmp_path / "logs").exists()  # no run folder, no config.yaml, no checkpoint
    written = [p for p in tmp_path.rglob("*") if p.relative_to(tmp_path) not in before]
    assert not [p for p in written if p.suffix in (".part", ".pt2", ".onnx", ".csv")], written
