"""The quiet Trainer preset: a fit that writes no file, shows no progress and runs no sanity check; the CLI alike."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel

from imagenette_sota import quiet
from imagenette_sota.cli import cli


class SanityCheck(L.Callback):
    """Counts the sanity checks a fit ran."""

    def __init__(self) -> None:
        self.runs = 0

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.runs += 1


def test_a_quiet_fit_writes_no_file_shows_no_progress_and_runs_no_sanity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default Trainer writes lightning_logs/ and its checkpoints
    sanity = SanityCheck()
    trainer = quiet.trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[sanity]
    )
    trainer.fit(BoringModel())
    assert trainer.global_step == 4 and sanity.runs == 0
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""  # the progress bar writes to stdout


def test_settings_override_the_preset(tmp_path: Path) -> None:
    trainer = quiet.trainer(accelerator="cpu", enable_checkpointing=True, default_root_dir=tmp_path, max_steps=1)
    trainer.fit(BoringModel())
    assert trainer.checkpoint_callback is not None and trainer.logger is None
    assert len(list((tmp_path / "checkpoints").glob("*.ckpt"))) == 1


def test_the_cli_arguments_parse_to_the_same_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["fit", *quiet.CLI_ARGS, "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert {key: trainer[key] for key in quiet.SETTINGS} == quiet.SETTINGS
