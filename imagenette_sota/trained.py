"""A trained model from its checkpoint alone: the network, its classes and the data module's validation path.

A fit's checkpoint carries what inference needs: the weights, the backbone's import path (``backbone``), the
model's hyperparameters (``num_classes``, ``channels_last``) and the data module's state (class ids and names,
presize, train/validation sizes, normalization mode and statistics, the training augmentation for TTA). It is
read with ``weights_only=True``: nothing in it runs. Checkpoints written before it carried all of that still load:
the backbone is found from the weights' shapes, the rest from the ``config.yaml`` LightningCLI wrote beside the run
(``<run>/config.yaml`` for ``<run>/checkpoints/*.ckpt``); what is still missing is named, with the option to pass.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from imagenette_sota import models
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.augment import Augment
from imagenette_sota.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from imagenette_sota.module import check_checkpoint

DATA_KEY = ImagenetteDataModule.__qualname__  # Lightning stores the data module's state under its class name
LEGACY_OPTIONS = ("presize", "val_size", "normalize", "dataset")  # what an old checkpoint may need spelled out
# Backbones named in a checkpoint are imported only from these packages; any other must be passed by the caller.
TRUSTED_PACKAGES = ("imagenette_sota.", "torchvision.models.")


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this suite, or one that lacks a setting inference needs."""


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
    backbone: Callable[[int], nn.Module]
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
    """The checkpoint at ``path`` loaded with ``weights_only=True``, or CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: give the .ckpt file a fit wrote")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or holding objects weights_only refuses
        raise CheckpointError(f"{path} is not a checkpoint: torch.load failed ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no 'state_dict')")
    return dict(checkpoint)


def load(path: str | Path, backbone: Callable[[int], nn.Module] | None = None, **legacy: Any) -> Trained:
    """Read the checkpoint at ``path``; ``backbone`` and ``legacy`` (presize, normalize, dataset) fill old ones."""
    if unknown := set(legacy) - set(LEGACY_OPTIONS):
        raise TypeError(f"unknown option(s) {sorted(unknown)}: choose from {LEGACY_OPTIONS}")
    checkpoint = read_checkpoint(path)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if not weights:
        raise CheckpointError(f"{path} holds no 'model.*' weights: not a checkpoint of ImagenetteClassifier")
    hparams = checkpoint.get("hyper_parameters", {})
    num_classes = int(hparams.get("num_classes", len(weights[_last_bias(weights)])))
    build = backbone or _backbone(checkpoint.get("backbone"), weights, num_classes, str(path))
    with torch.device("meta"):  # shapes only: the real network is built by Trained.network()
        check_checkpoint(build(num_classes), {"state_dict": weights}, str(path))
    state = _data_state(checkpoint.get(DATA_KEY, {}), Path(path), num_classes, legacy)
    return Trained(
        source=str(path),
        backbone=build,
        weights=weights,
        classes=tuple(state["classes"]),
        class_names=tuple(state["class_names"]),
        data_state=state,
        channels_last=bool(hparams.get("channels_last", True)),
    )


def _last_bias(weights: Mapping[str, torch.Tensor]) -> str:
    """The key of the classifier's bias (the last 1-d weight), whose length is the number of classes."""
    return [k for k, v in weights.items() if k.endswith("bias") and v.ndim == 1][-1]


def _backbone(recorded: str | None, weights: Mapping[str, torch.Tensor], n: int, source: str) -> Callable:
    """The recorded backbone if it is ours; an older checkpoint's from the shapes of its weights."""
    if recorded is not None:
        if not recorded.startswith(TRUSTED_PACKAGES):
            raise CheckpointError(
                f"{source} was trained with backbone {recorded}: loading imports only {TRUSTED_PACKAGES} by itself; "
                f"pass it yourself (--backbone {recorded}, or from_checkpoint(..., backbone=<the function>))"
            )
        module, name = recorded.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    for name in models.__all__:
        build = getattr(models, name)
        if name.startswith("xresnet") and callable(build):
            with torch.device("meta"):  # shapes only: no memory, no initialization
                own = build(n).state_dict()
            if own.keys() == weights.keys() and all(own[k].shape == weights[k].shape for k in own):
                return build
    raise CheckpointError(
        f"{source} records no backbone and its weights fit none of imagenette_sota.models: pass the one it was "
        "trained with (--backbone module.function, or from_checkpoint(..., backbone=<the function>))"
    )


def _data_state(saved: Mapping[str, Any], path: Path, num_classes: int, legacy: Mapping[str, Any]) -> dict:
    """The data module's state; settings an old checkpoint lacks come from ``legacy``, then the run's config.yaml."""
    config, given = _run_config(path), {k: v for k, v in legacy.items() if v is not None}
    defaults = {k: p.default for k, p in inspect.signature(ImagenetteDataModule).parameters.items()}
    state = dict(saved)
    for key in LEGACY_OPTIONS[:-1]:  # an option given wins; then the checkpoint; then the run's config
        state[key] = given.get(key, state.get(key, config.get(key)))
    dataset = given.get("dataset", config.get("dataset"))
    if ("classes" not in state or "dataset" in given) and dataset is not None:
        dm = ImagenetteDataModule(dataset, root=config.get("root", "data"), url=config.get("url"))
        state["classes"], state["class_names"] = dm.classes, dm.class_names
    needed = {"presize": "presize", "normalize": "normalize", "dataset": "classes"}
    if not saved and not config:  # val_size None means "train_size" in a fit's state; here nothing says which
        needed["val_size"] = "val_size"
    if missing := [option for option, key in needed.items() if state.get(key) is None]:
        raise CheckpointError(
            f"{path} does not record {', '.join(missing)} (it was written before checkpoints carried them, and no "
            f"config.yaml of its run lies at {path.parent.parent / 'config.yaml'}): pass "
            + " ".join(f"--{k} <value>" for k in missing)
            + " with the values of the run that wrote it (Python: from_checkpoint(..., "
            + ", ".join(f"{k}=..." for k in missing)
            + "))"
        )
    if len(state["classes"]) != num_classes:
        raise CheckpointError(f"{path}: the network has {num_classes} outputs, but {len(state['classes'])} classes")
    state.setdefault("train_size", config.get("train_size", state["val_size"]))
    state.setdefault("batch_size", defaults["batch_size"])
    if "augment" not in state:  # the training augmentation, for TTA "augment": the config's, else the default
        augment = config.get("augment", {})
        state["augment"] = None if augment is None else dict(augment.get("init_args", augment))
    if "mean" not in state:  # statistics: fitted ones are in any fit's checkpoint; else the configured ImageNet ones
        if state["normalize"] == "batch":
            raise CheckpointError(f"{path} holds no batch statistics: normalize='batch' needs the fit's data state")
        state |= {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "stats_fitted": True}
    return state


def _run_config(path: Path) -> dict[str, Any]:
    """The ``data`` settings of the run's config.yaml (``<run>/config.yaml`` beside ``<run>/checkpoints/``), or {}."""
    config = path.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return {}
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return dict(data.get("init_args", data))
