"""Exact resume: a CLI fit SIGKILLed mid-epoch and rerun with ``--ckpt_path last`` ends where an unbroken one does.

Real processes (``python -m imagenette_sota fit``) on the mini archive: progressive resizing with a size, batch size
and cycle change at the epoch that is killed, random crops, batch augmentation and mixup all on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any, cast

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from imagenette_sota import quiet
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.models import XResNet
from imagenette_sota.module import ImagenetteClassifier

REPO = Path(__file__).resolve().parents[1]
EPOCHS, KILL_EPOCH, KILL_BATCH = 4, 2, 3
TINY = {"layers": [1, 1, 1, 1], "widen": 0.25}  # an XResNet of 0.35 M parameters


class KillAt(Callback):
    """SIGKILLs its own process at the start of training batch ``batch`` of epoch ``epoch``: no cleanup, no save."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if trainer.current_epoch == self.epoch and i == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class Record(Callback):
    """Writes the epochs this process trained, the final metrics, lr and progressive sizes to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path, self.epochs = path, cast(list[int], [])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        record = {
            "epochs": self.epochs,
            # Not train/images_per_sec, a timing.
            "metrics": {k: v.item() for k, v in trainer.callback_metrics.items() if "loss" in k or "acc" in k},
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "sizes": [dm.train_size, dm.val_size, dm.batch_size],
        }
        Path(self.path).write_text(json.dumps(record))


def config(mini_dir: Path, run: Path, kill: bool, ema: bool = False) -> Path:
    """A 4-epoch fit: 32 px / batch 32 / the module's cycle, then from epoch 2 40 px / batch 24 / a new cycle.

    ``ema``: with Lightning's EMAWeightAveraging (the checkpoint's state_dict is then the average, the trained
    weights are under current_model_state).
    """
    callbacks = [
        {
            "class_path": "imagenette_sota.callbacks.ProgressiveResize",
            "init_args": {
                "schedule": {
                    0: {"size": 32, "batch_size": 32},
                    KILL_EPOCH: {"size": 40, "batch_size": 24},
                }
            },
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # Lightning 2.6 writes last.ckpt only when it writes a top-k checkpoint: keep the newest epoch's too.
            "init_args": {"dirpath": str(run / "ckpt"), "filename": "{epoch}", "save_last": True},
        },
        {"class_path": "tests.test_resume.Record", "init_args": {"path": str(run / "record.json")}},
    ]
    if ema:
        callbacks.insert(
            1, {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}}
        )
    if kill:
        kill_at = {"epoch": KILL_EPOCH, "batch": KILL_BATCH}
        callbacks.append({"class_path": "tests.test_resume.KillAt", "init_args": kill_at})
    settings = {
        "seed_everything": 7,
        "trainer": {
            **quiet.SETTINGS,
            "enable_checkpointing": True,  # the ModelCheckpoint above: what the resumed run starts from
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": EPOCHS,
            "default_root_dir": str(run),  # where the CLI saves config.yaml without a logger
            "callbacks": callbacks,
        },
        "model": {
            "backbone": {"class_path": "imagenette_sota.models.XResNet", "init_args": TINY},
            "cycle": {"lr_max": 1e-2},
            "mixup_alpha": 0.4,
        },
        "cycles": {"schedule": {KILL_EPOCH: {"lr_max": 5e-3, "pct_start": 0.3}}},
        "data": {"root": str(mini_dir), "presize": 48, "num_workers": 0},
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / ("killed.yaml" if kill else "fit.yaml")
    path.write_text(yaml.safe_dump(settings))
    return path


def launch(cfg: Path, *extra: str) -> subprocess.Popen:
    """``python -m imagenette_sota fit --config cfg`` on one thread, from the repository root (tests importable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "imagenette_sota", "fit", "--config", str(cfg), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """The return code and output of a launched run; a run still going after 20 minutes (a hang) is killed."""
    try:
        out, _ = process.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the run did not end in 20 minutes:\n{out}")
    return process.returncode, out


def weights(run: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return torch.load(run / "ckpt" / "last.ckpt", weights_only=True)[key]


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_a_run_killed_mid_epoch_resumes_exactly(mini_dir: Path, tmp_path: Path, ema: bool) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    runs = [launch(config(mini_dir, whole, False, ema)), launch(config(mini_dir, broken, True, ema))]
    (whole_rc, whole_out), (broken_rc, broken_out) = (finish(p) for p in runs)
    assert whole_rc == 0, whole_out
    assert broken_rc == -signal.SIGKILL, broken_out
    assert not (broken / "record.json").exists()
    saved = torch.load(broken / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == KILL_EPOCH - 1
    assert sorted(p.name for p in (broken / "ckpt").iterdir()) == [f"epoch={KILL_EPOCH - 1}.ckpt", "last.ckpt"]

    rc, out = finish(launch(config(mini_dir, broken, False, ema), "--ckpt_path", "last"))
    assert rc == 0, out
    expected, resumed = (json.loads((run / "record.json").read_text()) for run in (whole, broken))
    assert expected["epochs"] == list(range(EPOCHS)) and resumed["epochs"] == list(range(KILL_EPOCH, EPOCHS))
    assert resumed["sizes"] == expected["sizes"] == [40, None, 24]  # validation follows the train size
    assert resumed["lr"] == expected["lr"] == pytest.approx(5e-3 / 1e5)  # the second cycle ran to its end
    assert resumed["metrics"] == expected["metrics"] and "val/acc" in expected["metrics"]
    for key in ("state_dict", "current_model_state") if ema else ("state_dict",):  # the average and the weights
        final, reference = weights(broken, key), weights(whole, key)
        assert final.keys() == reference.keys()
        for name, value in reference.items():
            assert torch.equal(final[name], value), f"{key}: {name}"
    if ema:
        averaged, trained = weights(whole), weights(whole, "current_model_state")
        assert not all(torch.equal(averaged[k], trained[k]) for k in trained)


def test_validating_changes_no_trained_weight(mini_dir: Path, one_thread: None) -> None:
    # benchmarks.cpu_time_to_accuracy relies on it: a run that validates once trains what one validating every
    # epoch does, since no training draw comes from a stream that validation could advance.
    def fit(validate: bool) -> dict[str, torch.Tensor]:
        L.seed_everything(0)
        dm = ImagenetteDataModule(root=mini_dir, presize=48, train_size=32, batch_size=16, num_workers=0)
        model = ImagenetteClassifier(backbone=partial(XResNet, **TINY), num_classes=10, mixup_alpha=0.4)
        trainer = quiet.trainer(
            max_epochs=2,
            limit_train_batches=3,
            limit_val_batches=2 if validate else 0,
            num_sanity_val_steps=2,  # Lightning's default: the sanity pass validates before training too
        )
        trainer.fit(model, dm)
        return model.state_dict()

    validated, not_validated = fit(True), fit(False)
    for name, value in validated.items():
        assert torch.equal(not_validated[name], value), name
