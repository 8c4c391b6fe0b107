"""The ``imagenette-sota`` command: LightningCLI over ImagenetteClassifier and ImagenetteDataModule.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's; ``tta`` scores a checkpoint with test-time
augmentation, and ``final_tta`` (a top-level key: ``final_tta: {mode: flip}``) does so at the end of a ``fit``, on
the final weights (the averaged ones under ``EMAWeightAveraging``), inside the fit's wall time. Every run logs to
TensorBoard (``lightning_logs/<trainer.logger.init_args.name>/version_N``) with a ``LearningRateMonitor`` (lr and
momentum per step), ``TrainScalars`` (image size, batch size, images/s) and ``Inspection`` (images, confusion
matrix, top losses), and times its one-cycles with ``OneCycles``; they are configured under the top-level keys
``lr_monitor``, ``train_scalars``, ``inspection`` and ``cycles``. Checkpoints are written atomically
(``trainer.plugins``: ``AtomicCheckpointIO``) and loaded with ``weights_only=True``; one of another architecture or
number of classes is refused with the mismatching shapes. ``fit --budget 10m`` (a top-level key) ends the fit and its
final TTA within that wall time (``TimeBudget``; ``max_epochs`` then gives the schedule's shape, not its length).
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jsonargparse
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from imagenette_sota import seeds
from imagenette_sota.callbacks.budget import TimeBudget
from imagenette_sota.callbacks.cycles import OneCycles
from imagenette_sota.callbacks.inspection import Inspection
from imagenette_sota.callbacks.scalars import TrainScalars
from imagenette_sota.callbacks.tta import tta as test_time_augmentation
from imagenette_sota.checkpoint_io import check_ckpt_path
from imagenette_sota.commands import COMMANDS
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.module import ImagenetteClassifier, check_checkpoint
from imagenette_sota.tta import TTASettings


class ImagenetteTrainer(L.Trainer):
    """Lightning's Trainer with ``tta``: the ``imagenette-sota tta`` subcommand."""

    def tta(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str,
        settings: TTASettings = TTASettings(),
    ) -> tuple[Tensor, Tensor]:
        """Validation accuracy of the checkpoint at ckpt_path with and without test-time augmentation (fastai's tta).

        Args:
            ckpt_path: a checkpoint of a fit with the same model and data configuration.
            settings: the views and how they combine (``--settings.n``, ``--settings.mode``, ...; fastai's tta).
        """
        # Lightning's own checkpoints, which hold the data module's state (sizes, statistics) beside the weights.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        check_checkpoint(model, checkpoint, ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
        if type(datamodule).__qualname__ in checkpoint:
            datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])
        return test_time_augmentation(self, model, datamodule, settings)


# Only a refusal raised by this package's own ``raise`` statements (or jsonargparse's) is a setting's error: an
# error from deep inside a fit keeps its traceback, whatever its message happens to quote.
REFUSERS = (str(Path(__file__).resolve().parent), str(Path(jsonargparse.__file__).resolve().parent))


class ConfigurationError(Exception):
    """A setting that a class refused, with the message that names its config key (``config_error``)."""


class ImagenetteCLI(LightningCLI):
    """LightningCLI with ``num_classes`` taken from the data, TensorBoard monitoring by default and ``tta``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningCLI's; a setting a class refuses (while instantiating or running) raises ConfigurationError."""
        try:
            super().__init__(*args, **kwargs)
        except (ValueError, TypeError, KeyError, OSError, MisconfigurationException) as error:
            config = getattr(self, "config", None)  # parsed before the classes were made
            subcommand = config.get("subcommand") if config is not None else None
            message = config_error(error, config.get(subcommand, config) if config is not None else None)
            if message is None:
                raise
            raise ConfigurationError(message) from error

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and ``tta``."""
        return {**LightningCLI.subcommands(), "tta": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the class count into the model; add the monitoring and one-cycle callbacks and the default logger."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TrainScalars, "train_scalars")
        parser.add_lightning_class_args(Inspection, "inspection")
        parser.add_lightning_class_args(OneCycles, "cycles")
        parser.add_argument(
            "--final_tta",
            type=TTASettings | None,
            default=None,
            help="after fit: test-time augmentation of the final weights on the validation set (e.g. {mode: flip})",
        )
        parser.add_argument(
            "--budget",
            type=str | float | None,
            default=None,
            help="fit: the wall time from fit's start to the final accuracy (90s, 10m, 1h); it decides the fit's "
            "length, max_epochs its shape (imagenette_sota.callbacks.TimeBudget)",
        )
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": ""},
                },
                "trainer.plugins": {"class_path": "imagenette_sota.checkpoint_io.AtomicCheckpointIO"},
                "lr_monitor.logging_interval": "step",
                "lr_monitor.log_momentum": True,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse a ``ckpt_path`` that is missing or no checkpoint (before Lightning reads it)."""
        super().parse_arguments(parser, args)
        if subcommand := self.config.get("subcommand"):
            try:
                check_ckpt_path(self.config[subcommand].get("ckpt_path"))
            except (FileNotFoundError, ValueError) as error:
                parser.error(str(error))  # usage, the message, exit status 2: like any other bad argument

    def before_instantiate_classes(self) -> None:
        """Load checkpoints with ``weights_only=True`` (no code runs) unless ``--weights_only`` says otherwise."""
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if config.get("weights_only", False) is None:
            config["weights_only"] = True

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer; without a logger (``--trainer.logger false``) the lr monitor, which needs one, is left out."""
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        config = self.config_init[self.subcommand] if self.subcommand else {}
        if self.subcommand == "fit" and config.get("budget") is not None:  # a shared config's budget: fit's only
            if any(isinstance(c, TimeBudget) for c in trainer.callbacks):
                raise ValueError(f"budget={config['budget']!r} and a TimeBudget among the callbacks: give one budget")
            trainer.callbacks.append(TimeBudget(config["budget"]))
        for budget in (c for c in trainer.callbacks if isinstance(c, TimeBudget) and c.final_tta is None):
            budget.final_tta = config.get("final_tta")  # what follows the fit is inside the budget
        return trainer

    def before_fit(self) -> None:
        """Start a budget's clock: data preparation (a first cache build) is inside it."""
        for budget in (c for c in self.trainer.callbacks if isinstance(c, TimeBudget)):
            budget.start()

    def after_fit(self) -> None:
        """Print the final validation metrics, the number a fit is run for; then the ``final_tta``, if configured."""
        metrics = {k: round(v.item(), 4) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and self.trainer.is_global_zero:
            print("final " + "  ".join(f"{k}={v}" for k, v in sorted(metrics.items())))
        settings = self.config_init[self.subcommand].get("final_tta")
        if settings is not None and self.trainer.fast_dev_run:  # it predicts one batch: TTA needs every image
            rank_zero_info("final_tta skipped: fast_dev_run predicts one batch, TTA scores every validation image")
        elif settings is not None:
            self.final_tta = final_tta(self.trainer, self.model, self.datamodule, settings)
            if self.trainer.is_global_zero:
                print(f"final_tta ({settings.mode}) acc={self.final_tta['acc']:.4f} in {self.final_tta['s']:.1f} s")


def final_tta(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, settings: TTASettings
) -> dict[str, float]:
    """Timed TTA after a fit: {"acc", "s" (the seconds it took), "end" (``time.perf_counter()`` at its end)}."""
    start = time.perf_counter()
    probs, targets = test_time_augmentation(trainer, model, datamodule, settings)
    end = time.perf_counter()
    return {"acc": (probs.argmax(1) == targets).float().mean().item(), "s": end - start, "end": end}


def config_error(error: BaseException, settings: Any = None) -> str | None:
    """The message for a setting that a class refused, naming its config key; None for other errors (a bug's).

    Lightning's ``MisconfigurationException`` is a setting's error as it is. Otherwise the key is found in the parsed
    ``settings`` (the subcommand's jsonargparse Namespace) by the refused value: the classes of this package name it
    as ``name=value`` in their messages (``presize=0 must be a positive integer``), so the keys whose last part and
    value read so are it; failing that, the keys whose text value (a path, a URL) the message quotes, the longest.
    """
    if isinstance(error, MisconfigurationException):
        return f"error: {error}"
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    if settings is None or not where or not where[0].filename.startswith(REFUSERS):
        return None
    if where[0].filename.startswith(REFUSERS[0]) and not (where[0].line or "").startswith("raise"):
        return None
    message = str(error.args[0]) if error.args else str(error)
    leaves = [(k, v) for k, v in settings.items() if isinstance(v, (bool, int, float, str)) and v is not None]
    keys = [key for key, value in leaves if f"{key.rsplit('.', 1)[-1]}={value!r}" in message]
    if not keys:
        quoted = [
            (key, value) for key, value in leaves if isinstance(value, str) and len(value) > 3 and value in message
        ]
        longest = max((len(value) for _, value in quoted), default=0)
        keys = [key for key, value in quoted if len(value) == longest]
    if not keys:
        return None
    fix = f"fix it in the config file or with --{keys[0]} on the command line"
    return f"error: {', '.join(keys)}: {message}\n  {fix}"


def cli(args: list[str] | None = None, **kwargs: Any) -> ImagenetteCLI:
    """Run the CLI on ``args`` (None: the command line) and return it, for tests, notebooks and benchmarks.

    ``kwargs`` go to LightningCLI (e.g. ``trainer_defaults={"callbacks": [...]}`` adds callbacks to the config's).

    A setting that a class rejects ends the run like a parser error (a message on stderr, exit status 2).
    """
    try:
        return ImagenetteCLI(
            ImagenetteClassifier,
            ImagenetteDataModule,
            trainer_class=ImagenetteTrainer,
            seed_everything_default=seeds.DEFAULT,
            args=args,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def main(args: list[str] | None = None) -> None:
    """Entry point of ``imagenette-sota`` and ``python -m imagenette_sota``; classify/export/serve: commands.py."""
    args = sys.argv[1:] if args is None else args
    if args and args[0] in COMMANDS:
        raise SystemExit(COMMANDS[args[0]](args[1:]))
    cli(args)
