"""Predictor: a checkpoint's model on any image, through the data module's own validation path.

    predictor = Predictor.from_checkpoint("run/checkpoints/last.ckpt")
    for p in predictor(["cat.jpg", pil_image, uint8_tensor], top_k=3):
        print(p.top[0].name, p.top[0].probability)

An image is presized exactly as a validation image is (the dataset's own ``open_rgb`` and ``presize``: decode to
RGB, short side to ``presize``, centre crop), then batched through the data module's ``val_transform`` (resize to
``val_size``, normalize) and the network; with ``tta``, through the views of ``imagenette_sota.tta`` instead. Augment
TTA re-draws the presize crop per view, as fastai's ``tta`` does, and seeds every draw from the image's own pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from imagenette_sota import seeds
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.dataset import (
    DECODE_ERRORS,
    BadImageError,
    content_key,
    keyed_crops,
    open_rgb,
    presize,
    to_rgb,
)
from imagenette_sota.data.defaults import predict_workers
from imagenette_sota.models import fold_batchnorm
from imagenette_sota.trained import Trained, load
from imagenette_sota.tta import TTAMode, TTASettings, tta_predict

ImageInput = str | Path | bytes | BinaryIO | Image.Image | Tensor | np.ndarray
Precision = Literal["32", "bf16"]


class Guess(NamedTuple):
    """One of the top-k answers for an image."""

    class_id: str
    name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The top-k answers for one image and its full probability vector (in class order)."""

    top: list[Guess]
    probs: Tensor


class _Files(Dataset):
    """``(index, uint8 image)`` or ``(index, reason)`` for each file: a bad file does not stop a run.

    The image is the validation crop (3, P, P), or with ``crops`` > 0 the (1 + crops, 3, P, P) of ``keyed_crops``.
    """

    def __init__(self, files: Sequence[str | Path | BinaryIO], size: int, crops: int = 0, seed: int = 0) -> None:
        self.files, self.size, self.crops, self.seed = list(files), size, crops, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | str]:
        file = self.files[i]
        try:  # decoded as the dataset decodes (JPEGs DCT-scaled to >= size)
            img = open_rgb(Path(file) if isinstance(file, str) else file, self.size)
        except DECODE_ERRORS as e:  # PIL's reason (truncated, not an image, unreadable)
            return i, f"cannot decode image: {e}"
        return i, crops_of(img, self.size, self.crops, self.seed)


def crops_of(img: Image.Image, size: int, crops: int, seed: int) -> Tensor:
    """The validation crop (3, size, size) of an RGB image, or its ``keyed_crops`` when ``crops`` > 0."""
    return keyed_crops(img, size, crops, seed) if crops else pil_to_tensor(presize(img, size, (0.5, 0.5)))


def _stack_good(batch: list[tuple[int, Tensor | str]]) -> tuple[list[int], Tensor | None, dict[int, str]]:
    """(indices of the decoded files, their images stacked, index -> reason for the others), in the worker.

    One stacked tensor per batch crosses from a worker process (one shared-memory block, not one per image).
    """
    good = [(i, x) for i, x in batch if isinstance(x, Tensor)]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, {i: x for i, x in batch if isinstance(x, str)}


class WithPreprocessing(nn.Module):
    """``network`` behind the data module's validation transform, softmax after: uint8 images -> probabilities."""

    def __init__(self, network: nn.Module, data: ImagenetteDataModule) -> None:
        super().__init__()
        self.network, self.data = network, data

    def forward(self, images: Tensor) -> Tensor:
        """Probabilities (N, C) of uint8 presized images (N, 3, P, P), in fp32 (also from bf16 logits)."""
        return self.network(self.data.val_transform(images)).float().softmax(1)


class Predictor:
    """A trained network with its data module's validation path: ``predictor(images, top_k)``.

    ``network``: the network, BatchNorm folded (normalized images -> logits); ``pipeline``: presized uint8 images ->
    probabilities, what ``export`` writes; ``tta_settings``: the views of test-time augmentation (None: the centre).
    """

    def __init__(
        self,
        network: nn.Module,
        data: ImagenetteDataModule,
        classes: Sequence[str],
        class_names: Sequence[str],
        device: str | torch.device | None = None,
        tta: TTAMode | TTASettings | None = None,
        precision: Precision = "32",
    ) -> None:
        """Args:
        network: maps normalized images to logits. data: provides ``presize``, ``val_transform`` (and, for TTA,
        ``train_transform``). classes, class_names: ids and human names in label order.
        device: where the network runs (None: CUDA if available, else CPU). tta: None, "flip", "five_crop" or
        "augment" (the TTA code with fastai's defaults), or TTASettings. precision: "32", or "bf16" (the network
        under bf16 autocast: faster on GPUs and on CPUs with bf16 units; probabilities close to fp32's).
        """
        if precision not in get_args(Precision):
            raise ValueError(f"precision={precision!r}: choose one of {get_args(Precision)}")
        self.precision = precision
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # BatchNorm folded into the convs: the same probabilities (to float rounding), one pass less per ConvBN.
        self.network, self.data = fold_batchnorm(network.to(self.device).eval()), data
        self.pipeline = WithPreprocessing(self.network, data)  # the exported graphs compute exactly this
        self.classes, self.class_names = list(classes), list(class_names)
        self.tta_settings = TTASettings(mode=tta) if isinstance(tta, str) else tta
        # Like fastai's tta, augmented views re-draw the presize crop: such a Predictor takes 1 + n crops per image.
        self.crops = 0 if self.tta_settings is None else self.tta_settings.crops

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        tta: TTAMode | TTASettings | None = None,
        precision: Precision = "32",
        trust: Sequence[str] = (),
    ) -> Predictor:
        """The model of a fit's checkpoint (``weights_only``); ``trust``: packages its backbone may come from besides
        ``backbone.TRUSTED`` (``trained.load``)."""
        trained: Trained = load(path, trust)
        network, data = trained.network(), trained.data_module()
        return cls(network, data, trained.classes, trained.class_names, device, tta, precision)

    @property
    def presize(self) -> int:
        """Side (px) of the square uint8 images the network's preprocessing takes."""
        return self.data.presize

    def presized(self, image: ImageInput) -> Tensor:
        """uint8 (3, presize, presize): the validation set's decode, short side to presize and centre crop.

        Files (paths, bytes, binary file objects) decode as the dataset decodes them (JPEGs DCT-scaled).
        """
        return self._crops(image, 0)

    def prepared(self, image: ImageInput) -> Tensor:
        """What ``probabilities`` takes for one image: ``presized``, or (1 + n, 3, P, P) crops for augment TTA."""
        return self._crops(image, self.crops)

    def _crops(self, image: ImageInput, crops: int) -> Tensor:
        """The centre crop, or ``keyed_crops``, of any supported image."""
        seed = 0 if self.tta_settings is None else self.tta_settings.seed
        if isinstance(image, bytes):  # an encoded file's bytes (an upload)
            image = io.BytesIO(image)
        if isinstance(image, (str, Path, io.IOBase)):
            item = _Files([image], self.presize, crops, seed)[0][1]
            if isinstance(item, str):
                name = image if isinstance(image, (str, Path)) else getattr(image, "name", "the image's bytes")
                raise BadImageError(f"{name}: {item}")
            return item
        if isinstance(image, np.ndarray):  # numpy: (H, W) or (H, W, C), the image libraries' layout
            image = torch.from_numpy(np.array(image.transpose(2, 0, 1) if image.ndim == 3 else image))  # copied
        if isinstance(image, Tensor):  # torch: (H, W) or (C, H, W) with C in 1, 3, 4
            if image.dtype != torch.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[0] > 4):
                raise ValueError(
                    f"an image tensor must be uint8 (H, W) or (C, H, W) with C <= 4, got {image.dtype} "
                    f"{tuple(image.shape)}: convert it (x.mul(255).byte() for floats in [0, 1])"
                )
            image = to_pil_image(image if image.ndim == 3 else image[None])
        if not isinstance(image, Image.Image):
            raise TypeError(f"cannot classify a {type(image).__name__}: give a path, a PIL image or a uint8 array")
        return crops_of(to_rgb(image), self.presize, crops, seed)

    @torch.inference_mode()
    def probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities (B, C) of a presized uint8 batch (B, 3, P, P), or (B, 1 + n, 3, P, P) (``prepared``).

        Augment TTA seeds each image's draws from its own centre crop (``content_key``): an image gets the same
        answer in any batch, at any position, in any call.
        """
        generators = None
        settings = self.tta_settings
        if settings is not None and settings.mode == "augment":
            centres = (x[:, 0] if x.ndim == 5 else x).cpu()
            seed = settings.seed
            generators = [seeds.generator(seeds.derive(seed, seeds.AUGMENT, content_key(c))) for c in centres]
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            if settings is None:
                probs = self.pipeline(x)
            else:
                probs = tta_predict(self.network, self.data, settings, x, generators)["probs"]
        return probs.cpu()  # fp32 either way: both softmax in fp32

    def top(self, probs: Tensor, top_k: int = 5) -> list[Prediction]:
        """Per row of ``probs`` its ``top_k`` (class id, name, probability) and the row itself."""
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)  # (B, k) each
        out = []
        for row_values, row_indices, row in zip(values.tolist(), indices.tolist(), probs, strict=True):
            pairs = zip(row_values, row_indices, strict=True)
            guesses = [Guess(self.classes[i], self.class_names[i], v) for v, i in pairs]
            out.append(Prediction(guesses, row))
        return out

    def __call__(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 5, batch_size: int = 64
    ) -> list[Prediction]:
        """Top-k answers and probabilities per image (paths, PIL images, uint8 tensors or arrays of any size).

        A 4-d tensor or array is a batch of images. An unreadable file raises BadImageError naming it.
        """
        if isinstance(images, (str, Path, bytes, io.IOBase, Image.Image)) or (
            isinstance(images, (Tensor, np.ndarray)) and images.ndim < 4
        ):
            images = [images]
        out: list[Prediction] = []
        p = self.presize
        if isinstance(images, Tensor) and images.dtype == torch.uint8 and images.shape[1:] == (3, p, p):
            for batch in images.split(batch_size):  # already presized: straight to the network, as a batch
                out += self.top(self.probabilities(batch), top_k)
            return out
        items = list(images)
        for start in range(0, len(items), batch_size):
            x = torch.stack([self.prepared(image) for image in items[start : start + batch_size]])
            out += self.top(self.probabilities(x), top_k)
        return out

    def classify_files(
        self, paths: Sequence[str | Path], top_k: int = 5, batch_size: int = 64, num_workers: int | None = None
    ) -> Iterator[tuple[Path, Prediction | str]]:
        """(path, prediction) per file in order, or (path, why it could not be read); decoding in ``num_workers``
        processes (None: ``predict_workers``, none on the CPU)."""
        paths = [Path(p) for p in paths]
        if num_workers is None:
            num_workers = predict_workers(len(paths), batch_size, self.device.type != "cpu")
        seed = 0 if self.tta_settings is None else self.tta_settings.seed
        files = _Files(paths, self.presize, self.crops, seed)
        loader = DataLoader(files, batch_size, num_workers=num_workers, collate_fn=_stack_good)
        start = 0
        for good, images, failed in loader:
            answers = self.top(self.probabilities(images), top_k) if images is not None else []
            results: dict[int, Prediction | str] = {**dict(zip(good, answers, strict=True)), **failed}
            for i in range(start, start + len(results)):
                yield paths[i], results[i]
            start += len(results)
