"""A trained model from its checkpoint alone: the network, its classes and the data module's validation path.

A fit's checkpoint carries what inference needs: the weights, how to build the backbone (``backbone``: an import
path, or a class with its arguments; imagenette_sota.backbone), the model's ``channels_last`` and the data module's
state (class ids and names, presize, train/validation sizes, normalization mode and statistics, the training
augmentation for TTA). It is read with ``weights_only=True``, and the backbone is imported only from trusted
packages or those the caller names: nothing that the checkpoint's author chose runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagenette_sota import backbone as backbones
from imagenette_sota.checkpoint_io import not_a_checkpoint
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.augment import Augment
from imagenette_sota.module import check_checkpoint

DATA_KEY = ImagenetteDataModule.__qualname__  # Lightning stores the data module's state under its class name
FIX = "give the .ckpt file a fit wrote (<run>/checkpoints/*.ckpt)"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this suite: missing, not a checkpoint, or naming untrusted code."""


class ChannelsLast(nn.Module):
    """``net`` in the NHWC memory layout it trained in, inputs made NHWC too (the model's ``channels_last``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (B, C, H, W) in any layout."""
        return self.net(x.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class Trained:
    """Everything inference needs, read from one checkpoint."""

    source: str
    backbone: backbones.Backbone
    weights: dict[str, torch.Tensor]  # the backbone's state dict
    classes: tuple[str, ...]  # class ids (folder names), in label order
    class_names: tuple[str, ...]  # human-readable names, in label order
    data_state: dict[str, Any]  # ImagenetteDataModule.state_dict() of the fit
    channels_last: bool

    @property
    def presize(self) -> int:
        """Square side (px) each image is cropped and resized to before the validation transform."""
        return int(self.data_state["presize"])

    def network(self, channels_last: bool | None = None) -> nn.Module:
        """The trained backbone in eval mode, on the CPU; NHWC as trained unless ``channels_last`` says otherwise."""
        net = self.backbone(len(self.classes))
        net.load_state_dict(self.weights)
        nhwc = self.channels_last if channels_last is None else channels_last
        return (ChannelsLast(net) if nhwc else net).eval()

    def data_module(self) -> ImagenetteDataModule:
        """The fit's data module restored for its validation path (``presize`` + ``val_transform``) and TTA."""
        state = self.data_state
        augment = state["augment"]
        dm = ImagenetteDataModule(
            presize=state["presize"],
            train_size=state["train_size"],
            val_size=state["val_size"],
            normalize=state["normalize"],
            augment=None if augment is None else Augment(**{k: _tuple(v) for k, v in augment.items()}),
            num_workers=0,
        )
        dm.load_state_dict(state)
        return dm


def _tuple(value: Any) -> Any:
    """A list read back from a checkpoint as the tuple it was (Augment's ranges)."""
    return tuple(value) if isinstance(value, list) else value


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` loaded with ``weights_only=True``, or CheckpointError naming the file and the fix."""
    path = Path(path)
    if problem := not_a_checkpoint(path):
        raise CheckpointError(f"checkpoint {path} {problem}: {FIX}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False, which runs the file's code
        raise CheckpointError(
            f"checkpoint {path} holds Python objects beyond tensors and plain data, which a fit's checkpoint never "
            f"does; loading them could run code, so it is refused: {FIX}"
        ) from None
    except Exception as e:  # truncated, or a zip file that torch did not write
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}): {FIX}") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no 'state_dict'): {FIX}")
    return dict(checkpoint)


def load(path: str | Path, trust: Sequence[str] = ()) -> Trained:
    """Read the checkpoint at ``path``; its backbone is imported from ``backbone.TRUSTED`` and ``trust`` only."""
    checkpoint = read_checkpoint(path)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    state = checkpoint.get(DATA_KEY)
    if not weights or state is None:
        lacks = "'model.*' weights" if not weights else f"{DATA_KEY} state"
        raise CheckpointError(f"{path} holds no {lacks}: it is not a checkpoint of an imagenette-sota fit; {FIX}")
    if checkpoint.get("backbone") is None:
        raise CheckpointError(
            f"{path} does not record how to build its network: the fit's backbone was a lambda or a local function. "
            "Train with an importable function or class, or functools.partial of one (the CLI's model.backbone is)"
        )
    try:
        build = backbones.build(checkpoint["backbone"], trust)
        with torch.device("meta"):  # shapes only: the real network is built by Trained.network()
            check_checkpoint(build(len(state["classes"])), {"state_dict": weights}, str(path))
    except ValueError as e:  # an untrusted or unknown backbone, or weights of other shapes (CheckpointMismatchError)
        raise CheckpointError(f"checkpoint {path}: {e}" if str(path) not in str(e) else str(e)) from None
    return Trained(
        source=str(path),
        backbone=build,
        weights=weights,
        classes=tuple(state["classes"]),
        class_names=tuple(state["class_names"]),
        data_state=dict(state),
        channels_last=bool(checkpoint.get("hyper_parameters", {}).get("channels_last", True)),
    )
