"""The ``imagenette-sota`` command: LightningCLI over ImagenetteClassifier and ImagenetteDataModule, and the
checkpoint commands (``classify``, ``export``, ``serve``: commands.py) under the same name.

``fit``, ``validate`` and ``test`` are Lightning's; ``tta`` scores a checkpoint with test-time augmentation, and
``final_tta`` (a top-level key: ``final_tta: {mode: flip}``) does so at the end of a ``fit``, on the final weights
(the averaged ones under ``EMAWeightAveraging``), inside the fit's wall time, its centre view the last
validation's (``ValidationPredictions``: not predicted twice). Lightning's ``predict`` is not offered:
``classify`` is inference from the command line. Every run logs to TensorBoard
(``lightning_logs/<trainer.logger.init_args.name>/version_N``) with a ``LearningRateMonitor`` (lr and momentum per
step), ``TrainScalars`` (image size, batch size, images/s) and ``Inspection`` (images, confusion matrix, top
losses), and times its one-cycles with ``OneCycles``; they are configured under the top-level keys ``lr_monitor``,
``train_scalars``, ``inspection`` and ``cycles``. A run starts with ``RunSummary``'s four lines (data, model,
device, logs) instead of Lightning's model table, device lines and tips. Checkpoints are written atomically
(``trainer.plugins``: ``AtomicCheckpointIO``), record how the config spells ``model.backbone``, and are loaded with
``weights_only=True``; one of another architecture or number of classes is refused with the mismatching shapes.
A user's mistake ends with one message naming the key or file and the fix, and exit status 2 (``user_error``).
``fit --budget 10m`` (a top-level key) ends the fit and its final TTA within that wall time (``TimeBudget``;
``max_epochs`` then gives the schedule's shape, not its length).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings
from typing import Any

import jsonargparse
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from imagenette_sota import seeds
from imagenette_sota.backbone import record
from imagenette_sota.callbacks.budget import TimeBudget
from imagenette_sota.callbacks.cycles import OneCycles
from imagenette_sota.callbacks.inspection import Inspection
from imagenette_sota.callbacks.scalars import TrainScalars
from imagenette_sota.callbacks.summary import RunSummary
from imagenette_sota.callbacks.tta import ValidationPredictions
from imagenette_sota.callbacks.tta import tta as test_time_augmentation
from imagenette_sota.checkpoint_io import check_ckpt_path
from imagenette_sota.commands import COMMANDS
from imagenette_sota.commands import HELP as COMMAND_HELP
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.module import ImagenetteClassifier, check_checkpoint
from imagenette_sota.tta import TTASettings
from imagenette_sota.user_errors import FILE_ERRORS, SETTING_ERRORS, ConfigurationError, user_error


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


# What each training subcommand does (its --help and the tool's overview) and an example of it.
HELP = {
    "fit": "train a model (every constructor argument of the model, data and callbacks is a flag or a YAML key)",
    "validate": "validation loss and accuracy of a checkpoint",
    "test": "the same evaluation as validate, logged as test/ (the releases have no test split)",
    "tta": "validation accuracy of a checkpoint with and without test-time augmentation",
}
EXAMPLES = {
    "fit": "imagenette-sota fit --config configs/cpu_quick.yaml --trainer.max_epochs 2",
    "validate": "imagenette-sota validate --config configs/cpu_quick.yaml --ckpt_path <run>/checkpoints/<file>.ckpt",
    "test": "imagenette-sota test --config configs/cpu_quick.yaml --ckpt_path <run>/checkpoints/<file>.ckpt",
    "tta": "imagenette-sota tta --config configs/cpu_quick.yaml --ckpt_path <run>/checkpoints/<file>.ckpt "
    "--settings.mode flip",
}
# Lightning's lines that a run of this CLI says better in RunSummary, or that advertise other packages.
QUIET = re.compile(r"💡 Tip:|GPU available: |TPU available: |HPU available: |Loading `train_dataloader` to estimate")


class HelpFormatter(jsonargparse.DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with a subcommand's description and example kept as written."""


class ImagenetteCLI(LightningCLI):
    """LightningCLI with ``num_classes`` taken from the data, TensorBoard monitoring by default and ``tta``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningCLI's; a setting or file that is refused (instantiating or running) raises ConfigurationError."""
        try:
            super().__init__(*args, **kwargs)
        except (*SETTING_ERRORS, *FILE_ERRORS) as error:
            config = getattr(self, "config", None)  # parsed before the classes were made
            subcommand = config.get("subcommand") if config is not None else None
            message = user_error(error, config.get(subcommand, config) if config is not None else None)
            if message is None:
                raise
            raise ConfigurationError(message) from error

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands but ``predict`` (``classify`` is inference here), and ``tta``."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"} | {
            "tta": {"model", "datamodule"}
        }

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
                "trainer.enable_model_summary": False,  # RunSummary says the backbone and its parameter count
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
        """The Trainer with RunSummary; without a logger (``--trainer.logger false``) and so without the lr monitor,
        which needs one."""
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
        if self.subcommand == "fit" and config.get("final_tta") is not None:
            trainer.callbacks.append(ValidationPredictions())  # the final TTA's centre view: the last validation's
        trainer.callbacks.append(RunSummary(self.model, self.datamodule))
        return trainer

    def before_fit(self) -> None:
        """Refuse cycles without a length before a run folder is written; start a budget's clock: data preparation (a
        first cache build) is inside it."""
        for cycles in (c for c in self.trainer.callbacks if isinstance(c, OneCycles)):
            cycles.check_length(self.trainer, self.model)
        for budget in (c for c in self.trainer.callbacks if isinstance(c, TimeBudget)):
            budget.start()

    def after_instantiate_classes(self) -> None:
        """Have checkpoints record ``model.backbone`` as the config spells it (a class with its init_args too)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        spelled = config["model"]["backbone"]
        self.model.backbone_record = record(
            spelled.as_dict() if isinstance(spelled, jsonargparse.Namespace) else spelled
        )

    def after_fit(self) -> None:
        """Print the final validation metrics, the number a fit is run for; then the ``final_tta``, if configured."""
        metrics = {k: round(v.item(), 4) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and self.trainer.is_global_zero:
            print("final " + "  ".join(f"{k}={v}" for k, v in sorted(metrics.items())))
        settings = self.config_init[self.subcommand].get("final_tta")
        if settings is not None and self.trainer.fast_dev_run:  # it predicts one batch: TTA needs every image
            rank_zero_info("final_tta skipped: fast_dev_run predicts one batch, TTA scores every validation image")
        elif settings is not None:
            recorded = next((c for c in self.trainer.callbacks if isinstance(c, ValidationPredictions)), None)
            centre = recorded.centre_for(self.model, self.datamodule) if recorded else None
            if centre is None:
                rank_zero_info("final_tta: the centre view is predicted again (the last validation's does not apply)")
            self.final_tta = final_tta(self.trainer, self.model, self.datamodule, settings, centre)
            if self.trainer.is_global_zero:
                print(f"final_tta ({settings.mode}) acc={self.final_tta['acc']:.4f} in {self.final_tta['s']:.1f} s")


def final_tta(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    settings: TTASettings,
    centre: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Timed TTA after a fit: {"acc", "s" (the seconds it took), "end" (``time.perf_counter()`` at its end)}.

    centre: the last validation's centre-view predictions (``ValidationPredictions.centre_for``), not predicted again.
    """
    start = time.perf_counter()
    probs, targets = test_time_augmentation(trainer, model, datamodule, settings, centre)
    end = time.perf_counter()
    return {"acc": (probs.argmax(1) == targets).float().mean().item(), "s": end - start, "end": end}


def quiet_lightning() -> None:
    """Drop Lightning's tips and the lines RunSummary replaces, and a deprecation warning between Lightning and torch
    that no user can act on; Lightning's other messages and warnings stay. This package's own progress (download,
    extraction, cache build) is shown, as Lightning's is."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(getattr(f, "__name__", None) == "quiet" for f in logger.filters):

        def quiet(record: logging.LogRecord) -> bool:
            return not QUIET.match(record.getMessage())

        logger.addFilter(quiet)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    ours = logging.getLogger("imagenette_sota")
    if not ours.handlers:
        ours.addHandler(ToStderr())
        ours.setLevel(logging.INFO)


class ToStderr(logging.StreamHandler):
    """A log handler writing to ``sys.stderr`` as it is at each message (tests and notebooks replace it)."""

    @property
    def stream(self) -> Any:
        """``sys.stderr`` now."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler's own assignment: the property above answers instead


def cli(args: list[str] | None = None, **kwargs: Any) -> ImagenetteCLI:
    """Run the CLI on ``args`` (None: the command line) and return it, for tests, notebooks and benchmarks.

    ``kwargs`` go to LightningCLI (e.g. ``trainer_defaults={"callbacks": [...]}`` adds callbacks to the config's).

    A setting or file that is refused ends the run like a parser error (a message on stderr, exit status 2).
    """
    quiet_lightning()
    subcommands = {name: {"description": HELP[name], "epilog": f"example:\n  {EXAMPLES[name]}"} for name in HELP}
    try:
        return ImagenetteCLI(
            ImagenetteClassifier,
            ImagenetteDataModule,
            trainer_class=ImagenetteTrainer,
            seed_everything_default=seeds.DEFAULT,
            args=args,
            parser_kwargs={"prog": "imagenette-sota", "formatter_class": HelpFormatter, **subcommands},
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )
    except ConfigurationError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def overview() -> str:
    """``imagenette-sota --help``: every subcommand in one line, and where to read more."""
    lines = [
        "usage: imagenette-sota COMMAND [options]   (imagenette-sota COMMAND --help: its options and an example)",
        "",
        "Train image classifiers from scratch on Imagenette (the fastai chapter, in Lightning) and use them.",
        "",
        "train and evaluate (LightningCLI: --config FILE.yaml; --model.*, --data.*, --trainer.* override it):",
        *(f"  {name:<10}{text}" for name, text in HELP.items()),
        "use a trained checkpoint:",
        *(f"  {name:<10}{text}" for name, text in COMMAND_HELP.items()),
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``imagenette-sota`` and ``python -m imagenette_sota``; classify/export/serve: commands.py."""
    argv = sys.argv[1:] if args is None else args
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    if argv[0] in COMMANDS:
        raise SystemExit(COMMANDS[argv[0]](argv[1:]))
    if not argv[0].startswith("-") and argv[0] not in HELP:  # LightningCLI's message would list only its own
        known = ", ".join([*HELP, *COMMANDS])
        print(f"error: {argv[0]!r} is not a command: choose one of {known} (imagenette-sota --help)", file=sys.stderr)
        raise SystemExit(2)
    cli(args)  # None: LightningCLI reads the command line itself
