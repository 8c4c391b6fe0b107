"""Test-time augmentation (fastai's ``Learner.tta``): which views, how they are made from a raw batch, how they combine.

One home for the predict loop (``callbacks.tta``) and for inference (``predict.Predictor``). The views come from
any object with ``val_transform(x)`` (the centre view) and ``train_transform(x, generator)`` (the training
augmentation), such as ``ImagenetteDataModule``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import five_crop

from imagenette_sota.data.augment import Generators

TTAMode = Literal["augment", "flip", "five_crop"]


class Transforms(Protocol):
    """What the views are made with: a data module's normalized validation and training transforms."""

    def val_transform(self, x: Tensor) -> Tensor: ...

    def train_transform(self, x: Tensor, generator: Generators = None) -> Tensor: ...


@dataclass(frozen=True)
class TTASettings:
    """Which views test-time augmentation predicts and how it combines them (defaults: fastai's ``tta``).

    n: augmented passes (mode "augment" only). beta: weight of the centre view (fastai: 0.25).
    use_max: the elementwise max over the centre and the views instead of the weighted mean.
    mode: "augment" (n passes of the training augmentation), "flip" (the mirrored centre view) or
        "five_crop" (the four corners and the centre, each a ``crop`` fraction of the presized side).
    seed: seeds the augmented views: their presize crops per sample and view, their augmentation per rank and batch.
    """

    n: int = 4
    beta: float = 0.25
    use_max: bool = False
    mode: TTAMode = "augment"
    crop: float = 0.875
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in get_args(TTAMode):
            raise ValueError(f"mode={self.mode!r}: choose 'augment', 'flip' or 'five_crop'")
        if self.n < 0 or not 0 <= self.beta <= 1 or not 0 < self.crop <= 1:
            raise ValueError(
                f"need n >= 0, 0 <= beta <= 1 and 0 < crop <= 1; got n={self.n}, beta={self.beta}, crop={self.crop}"
            )

    @property
    def crops(self) -> int:
        """Presize crops per image besides the centre one: like fastai's, each augmented view starts from its own."""
        return self.n if self.mode == "augment" else 0

    @property
    def passes(self) -> int:
        """Forward passes over the images: the centre view and the others."""
        return 1 + {"augment": self.n, "flip": 1, "five_crop": 5}[self.mode]


def combine(centre: Tensor, views: Sequence[Tensor], beta: float = 0.25, use_max: bool = False) -> Tensor:
    """fastai's TTA: beta * centre + (1 - beta) * mean(views), or the elementwise max of all; no views: centre."""
    if not views:
        return centre
    stacked = torch.stack(list(views))  # (n, B, C)
    if use_max:
        return torch.maximum(centre, stacked.amax(0))
    return torch.lerp(stacked.mean(0), centre, beta)


def tta_views(data: Transforms, settings: TTASettings, x: Tensor, generator: Generators = None) -> Iterator[Tensor]:
    """The extra views, normalized, of a raw uint8 batch (B, 3, P, P), or (B, 1 + n, 3, P, P) with a crop per view.

    ``generator``: one for the batch, or one per sample (its draws then do not depend on the rest of the batch).
    """
    if settings.mode == "augment":
        for view in range(settings.n):
            yield data.train_transform(x[:, 1 + view] if x.ndim == 5 else x, generator)
    elif settings.mode == "flip":
        yield data.val_transform(x.flip(-1))
    else:
        side = round(settings.crop * min(x.shape[-2:]))
        yield from (data.val_transform(c) for c in five_crop(x, [side, side]))


def tta_predict(
    network: nn.Module, data: Transforms, settings: TTASettings, x: Tensor, generator: Generators = None
) -> dict[str, Tensor]:
    """{"probs": TTA probabilities, "plain": centre-view probabilities} of a raw batch (see ``tta_views``), in fp32.

    network: maps normalized images to logits.
    """
    plain = network(data.val_transform(x[:, 0] if x.ndim == 5 else x)).float().softmax(1)
    augmented = [network(v).float().softmax(1) for v in tta_views(data, settings, x, generator)]
    return {"probs": combine(plain, augmented, settings.beta, settings.use_max), "plain": plain}
