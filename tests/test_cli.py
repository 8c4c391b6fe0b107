"""The command line: defaults, round trips, clear configuration errors, no logger, tta, and safe checkpoint loading."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml

from imagenette_sota.checkpoint_io import AtomicCheckpointIO
from imagenette_sota.cli import ImagenetteTrainer, cli, main
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import xresnet18
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.user_errors import user_error

from .helpers import MINI_MD5

CONFIGS = Path(__file__).parents[1] / "configs"
QUICK = str(CONFIGS / "cpu_quick.yaml")
XRESNET34 = "imagenette_sota.models.xresnet34"


pytestmark = pytest.mark.usefixtures("one_thread")  # restores the thread count afterwards, unlike a bare set


def small(mini_dir: Path) -> list[str]:
    """Overrides that make the quick config run in seconds on the mini archive."""
    return [
        "--data.root",
        str(mini_dir),
        "--data.num_workers",
        "0",
        "--data.presize",
        "48",
        "--data.train_size",
        "32",
        "--data.batch_size",
        "10",
    ]


def printed(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``--print_config`` prints for `args`."""
    with pytest.raises(SystemExit) as exit_info:
        cli([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def rejected(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error message of a run that must stop before training: exit status 2, a message and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_defaults_seed_tensorboard_and_monitors(capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(printed(["fit"], capsys))
    assert config["seed_everything"] == 42
    logger = config["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    assert logger["init_args"]["save_dir"] == "lightning_logs"
    assert config["lr_monitor"] == {"logging_interval": "step", "log_momentum": True, "log_weight_decay": False}
    assert config["inspection"] == {"max_images": 16, "top_losses": 9, "confusion_matrix": True}
    assert "num_classes" not in config["model"]  # linked from the data, never configured


@pytest.mark.parametrize("name", ["cpu_quick", "progressive"])  # progressive: a schedule keyed by epoch numbers
def test_print_config_round_trips(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(CONFIGS / f"{name}.yaml")
    first = printed(["fit", "--config", config, "--model.mixup_alpha", "0.4", "--inspection.top_losses", "4"], capsys)
    saved = tmp_path / "config.yaml"
    saved.write_text(first)
    assert printed(["fit", "--config", str(saved)], capsys) == first
    assert yaml.safe_load(first)["model"]["mixup_alpha"] == 0.4


def test_num_classes_comes_from_the_data_and_runs_without_a_logger(mini_dir: Path) -> None:
    run = cli(["fit", "--config", QUICK, *small(mini_dir), "--trainer.logger", "false", "--trainer.fast_dev_run", "1"])
    assert run.model.hparams.num_classes == run.datamodule.num_classes == 10
    assert run.trainer.global_step == 1  # the lr monitor, which needs a logger, was left out rather than failing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.presize", "0"], ["data.presize", "must be a positive integer", "--data.presize"]),
        (["--data.batch_size", "-4"], ["data.batch_size", "must be a positive integer"]),
        (["--data.dataset", "imagenet"], ["data.dataset", "choose one of", "imagenette2-160"]),
        (["--data.train_size", "big"], ['"data.train_size"', "int"]),
        (["--data.no_such_key", "1"], ["--data.no_such_key"]),
        (["--data.augment.min_scale", "0"], ["data.augment", "min_scale=0.0 must be in (0, 1]"]),
        (["--model.mixup_alpha", "0.4", "--model.cutmix_alpha", "1"], ["model.mixup_alpha", "choose mixup or cutmix"]),
        (["--inspection.top_losses", "-1"], ["inspection.top_losses", "top_losses=-1 must be >= 0"]),
    ],
)
def test_configuration_errors_name_the_key_and_the_fix(
    args: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = rejected(["fit", "--config", QUICK, *args], capsys)
    for text in expected:
        assert text in err


def test_a_missing_dataset_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "imagenette2-160.tgz"
    args = ["--data.root", str(tmp_path), "--data.url", str(missing), "--trainer.fast_dev_run", "1"]
    err = rejected(["fit", "--config", QUICK, *args], capsys)
    assert "data.url" in err and str(missing) in err and "does not exist" in err


def test_other_errors_keep_their_traceback() -> None:
    with pytest.raises(ValueError) as error_info:
        int("not a number")  # raised outside the package: a bug to debug, not a setting to fix
    assert user_error(error_info.value) is None


@pytest.fixture(scope="module")
def fitted(mini_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The data arguments of a one-batch fit of the quick config (downloading the mini archive), and its checkpoint."""
    root = tmp_path_factory.mktemp("fit")
    data = [
        *small(root),
        "--data.url",
        str(mini_archive),
        "--data.md5",
        MINI_MD5,
        "--trainer.logger.init_args.save_dir",
        str(root / "logs"),
    ]
    cli(["fit", "--config", QUICK, *data, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])
    (ckpt,) = (root / "logs").glob("cpu_quick/version_0/checkpoints/*.ckpt")
    return data, ckpt


def test_tta_scores_a_checkpoint(
    fitted: tuple[list[str], Path], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data, ckpt = fitted
    with caplog.at_level(logging.INFO):
        run = cli(["tta", "--config", QUICK, *data, "--ckpt_path", str(ckpt), "--settings.n", "1"])
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[key]) for key, value in run.model.state_dict().items())
    assert "TTA (augment) accuracy" in caplog.text + capsys.readouterr().err
    assert isinstance(run.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the default plugin


class Payload:
    """Unpickles to a call: what a checkpoint from an untrusted source could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def test_checkpoints_load_weights_only(fitted: tuple[list[str], Path], tmp_path: Path) -> None:
    data, ckpt = fitted
    marker, unsafe = tmp_path / "code-ran", tmp_path / "unsafe.ckpt"
    torch.save({**torch.load(ckpt, weights_only=True), "extra": Payload(marker)}, unsafe)
    model, dm = ImagenetteClassifier(xresnet18), ImagenetteDataModule(root=tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ImagenetteTrainer(logger=False).tta(model, dm, ckpt_path=str(unsafe))
    assert not marker.exists()
    quiet = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]  # config.yaml goes there
    run = cli(["validate", "--config", QUICK, *data, *quiet, "--trainer.limit_val_batches", "1"])
    assert run.config["validate"]["weights_only"] is True  # what Trainer.fit, validate, ... load checkpoints with


def test_checkpoints_of_another_model_are_refused_with_the_shapes(
    fitted: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, ckpt = fitted
    err = rejected(["tta", "--config", QUICK, *data, "--ckpt_path", str(ckpt), "--model.backbone", XRESNET34], capsys)
    assert f"checkpoint {ckpt} does not fit this model" in err
    assert "weight(s) missing from the checkpoint, e.g. model.4.2." in err and "Use the backbone" in err
    # Five of the ten classes: the head has other shapes. Refused by fit before anything is trained.
    source = Path(data[data.index("--data.root") + 1]) / "imagenette2-160-mini"
    for split in ("train", "val"):
        for wnid in sorted(p.name for p in (source / split).iterdir())[:5]:
            (tmp_path / split).mkdir(exist_ok=True)
            (tmp_path / split / wnid).symlink_to(source / split / wnid)
    quiet = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    fit = ["fit", "--config", QUICK, *small(tmp_path), *quiet, "--ckpt_path", str(ckpt)]
    err = rejected(fit, capsys)
    assert f"checkpoint {ckpt} does not fit this model (trained with num_classes=10)" in err
    assert "model.11.weight: (10, 512) in the checkpoint, (5, 512) in the model" in err


def test_help_lists_every_command_and_each_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == ["fit", "validate", "test", "tta", "classify", "export", "serve"]  # predict: classify is inference
    for command in listed:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and f"usage: imagenette-sota {command}" in out.replace("[options] ", "")
        assert f"example:\n  imagenette-sota {command} " in out


def test_the_first_screen_is_ours(
    mini_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    logs = tmp_path / "logs"
    args = ["fit", "--config", QUICK, *small(mini_dir), "--trainer.logger.init_args.save_dir", str(logs)]
    monkeypatch.setattr(sys, "argv", ["imagenette-sota", *args, "--trainer.max_steps", "1"])
    with caplog.at_level(logging.INFO):
        main()  # as the console script runs it: the command line read by LightningCLI itself
    out, err = capfd.readouterr()
    # Lightning's messages are log records and its warnings Python warnings: pytest takes both from the screen.
    screen = "\n".join([out, err, *caplog.messages, *(str(w.message) for w in recwarn)])
    for noise in ("args parameter", "Tip:", "GPU available", "TPU available", "LeafSpec", "Total params"):
        assert noise not in screen, noise
    lines = {line.split()[0]: line for line in screen.splitlines() if line.split()}
    assert lines["data"].endswith(
        f"{mini_dir}: 200 training + 100 validation images, 10 classes; presize 48 px, train 32 px, val 32 px, batch 10"
    )
    assert lines["model"] == "model  imagenette_sota.models.xresnet18, 11,200,874 parameters"
    assert lines["device"] == "device cpu, precision 32-true, 1 thread"  # the one_thread fixture's
    assert lines["logs"] == f"logs   {logs / 'cpu_quick' / 'version_0'}  (tensorboard --logdir {logs})"
    assert "decode-once cache on by default" in screen
