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


def main(args: list[str] | None = None) -> ImagenetteCLI:
    """Entry point of ``imagenette-sota`` and ``python -m imagenette_sota``; ``args`` for tests."""
    return ImagenetteCLI(
        ImagenetteClassifier,
        ImagenetteDataModule,
        seed_everything_default=42,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
