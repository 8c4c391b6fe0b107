"""The ``imagenette-sota`` command: LightningCLI over ImagenetteClassifier and ImagenetteDataModule."""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.module import ImagenetteClassifier


class ImagenetteCLI(LightningCLI):
    """LightningCLI with ``num_classes`` derived from the data, never configured twice."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data module's class count into the model."""
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def after_fit(self) -> None:
        """Print the final validation metrics, the number a fit is run for."""
        metrics = {k: round(v.item(), 4) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and self.trainer.is_global_zero:
            print("final " + "  ".join(f"{k}={v}" for k, v in sorted(metrics.items())))


def cli(args: list[str] | None = None) -> ImagenetteCLI:
    """Run the CLI on ``args`` (None: the command line) and return it, for tests and notebooks."""
    return ImagenetteCLI(
        ImagenetteClassifier,
        ImagenetteDataModule,
        seed_everything_default=42,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``imagenette-sota`` and ``python -m imagenette_sota``."""
    cli(args)
