"""fastai's side: the recipe's anchor built from fastai 2.8's own objects, its numbers read from our parsed config.

- leaderboard_*: examples/train_imagenette.py: ``RandomResizedCrop(size, min_scale=0.35)`` + ``FlipItem`` on the
  images, ImageNet normalization, ``xresnet50(act_cls=Mish, sa=True)`` (with leaderboard_xse: ``xse_resnext50(...,
  pool=MaxPool)``, its max pools anti-aliased), ``LabelSmoothingCrossEntropy``, ``ranger``, ``fit_flat_cos``,
  ``MixUp`` where the recipe mixes.
- baseline, normalize, label_smoothing: the book's ``Resize(presize)`` + ``aug_transforms(size, min_scale=0.75)``,
  ``xresnet50``, ``fit_one_cycle``.
- progressive: the same at the first stage's size and batch, ``fit_one_cycle``, then the dataloaders of the second
  stage and ``fine_tune``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.layers import AvgPool, MaxPool
from fastai.vision.all import (
    Adam,
    CategoryBlock,
    CrossEntropyLossFlat,
    DataBlock,
    DataLoaders,
    FlipItem,
    GrandparentSplitter,
    ImageBlock,
    LabelSmoothingCrossEntropyFlat,
    Learner,
    MixUp,
    Normalize,
    RandomResizedCrop,
    Resize,
    accuracy,
    aug_transforms,
    get_image_files,
    imagenet_stats,
    parent_label,
    ranger,
    set_seed,
)
from fastai.vision.models.xresnet import xresnet50, xresnext50, xse_resnext50

from benchmarks.fastai_cpu import CPUAutocast, EpochTick
from benchmarks.recipe.diagnostics import area_prefilter
from benchmarks.recipe.scale import side, stages


class EpochValues(Callback):
    """Per epoch: the raw training batch losses and the validation accuracy (fine_tune's fits included)."""

    order = 60  # after the Recorder (50) has recorded the epoch

    def __init__(self) -> None:
        super().__init__()
        self.epoch_losses: list[list[float]] = []
        self.epoch_accs: list[float] = []

    def before_epoch(self) -> None:
        self.epoch_losses.append([])

    def after_batch(self) -> None:
        if self.training:
            self.epoch_losses[-1].append(float(self.loss.detach()))

    def after_epoch(self) -> None:
        self.epoch_accs.append(float(self.recorder.values[-1][2]))


def dataloaders(
    data: Path,
    leaderboard: bool,
    presize: int,
    normalize: bool,
    size: int,
    bs: int,
    device: str = "cpu",
    workers: int | None = 0,
) -> DataLoaders:
    """The recipe's DataBlock at ``size`` and batch ``bs``: train_imagenette.py's get_dls, or the book's presizing
    (``workers`` None: fastai's default)."""
    norm = [Normalize.from_stats(*imagenet_stats)] if normalize else []
    if leaderboard:
        item, batch = [RandomResizedCrop(size, min_scale=0.35), FlipItem(0.5)], norm
    else:
        item, batch = [Resize(presize)], [*aug_transforms(size=size, min_scale=0.75), *norm]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=get_image_files,
        splitter=GrandparentSplitter(valid_name="val"),
        get_y=parent_label,
        item_tfms=item,
        batch_tfms=batch,
    )
    workers_kw = {} if workers is None else {"num_workers": workers}
    return block.dataloaders(data, bs=bs, device=torch.device(device), **workers_kw)


def optimizer(model: dict[str, Any]) -> Callable:
    """fastai's ranger with the recipe's Ranger settings, else fastai's Adam (mom 0.9, sqr_mom 0.99, eps 1e-5)."""
    optimizer = model["optimizer"]
    if isinstance(optimizer, dict) and optimizer["class_path"].endswith("Ranger"):
        o = optimizer["init_args"]
        return partial(ranger, mom=o["mom"], sqr_mom=o["sqr_mom"], eps=o["eps"], k=o["k"], alpha=o["alpha"])
    return Adam


def network(model: dict[str, Any]) -> torch.nn.Module:
    """fastai's xresnet50 (or, with groups, its xse_resnext50 / xresnext50) with the recipe's activation,
    self-attention, shortcut pool and anti-aliased max pools, 10 outputs."""
    from imagenette_sota.models import blur_max_pools

    backbone = model["backbone"]
    init = backbone.get("init_args", {}) if isinstance(backbone, dict) else {}
    act = torch.nn.Mish if init.get("act") == "torch.nn.Mish" else torch.nn.ReLU
    kwargs = {"n_out": 10, "act_cls": act, "sa": bool(init.get("sa", False))}
    if init.get("groups", 1) == 1:
        return xresnet50(**kwargs)
    pool = MaxPool if init.get("shortcut_pool") == "max" else AvgPool
    net = (xse_resnext50 if init.get("reduction") else xresnext50)(pool=pool, **kwargs)
    return blur_max_pools(net) if init.get("max_blur") else net


def fit(learn: Learner, config: dict[str, Any], epochs: int, dls: Callable[[int, int], DataLoaders]) -> None:
    """The recipe's schedule: fit_flat_cos, the book's progressive fit_one_cycle + fine_tune, or fit_one_cycle."""
    m = config["model"]
    c, wd = m["cycle"], m["weight_decay"]
    if c["moms"] is None and c["div"] == 1.0:
        learn.fit_flat_cos(epochs, c["lr_max"], div_final=c["div_final"], pct_start=c["pct_start"], wd=wd)
    elif config.get("cycles", {}).get("fine_tune"):  # the book's progressive resizing
        tune = config["cycles"]["fine_tune"]
        learn.fit_one_cycle(tune["start_epoch"], c["lr_max"], wd=wd)  # at the first stage's size and batch
        learn.dls = dls(*stages(config)[1])
        learn.fine_tune(tune["epochs"], tune["base_lr"], freeze_epochs=tune.get("freeze_epochs", 1), wd=wd)
    else:
        one = {"div": c["div"], "div_final": c["div_final"], "pct_start": c["pct_start"], "wd": wd}
        learn.fit_one_cycle(epochs, c["lr_max"], **one)


def fastai_side(
    name: str,
    config: dict[str, Any],
    data: Path,
    epochs: int | None,
    scale: float,
    seed: int,
    prefilter: str = "fastai",
    precision: str = "32-true",
    device: str = "cpu",
    workers: int | None = 0,
    limit_batches: int | None = None,
) -> dict:
    """fastai's version of the recipe (see the module doc) on the same data, scale and number of steps, seeded;
    ``prefilter="ours"`` runs it inside ``area_prefilter``. ``precision`` as Lightning names it (fastai's
    ``to_fp16`` / ``to_bf16`` on a GPU, ``CPUAutocast`` for bf16 on the CPU); ``workers`` None: fastai's default;
    ``limit_batches``: the first batches of each epoch only (smoke runs)."""
    m, d = config["model"], config["data"]
    epochs = epochs or config["trainer"]["max_epochs"]
    leaderboard, normalize = name.startswith("leaderboard"), d["normalize"] == "imagenet"
    dls = partial(dataloaders, data, leaderboard, side(d["presize"], scale), normalize, device=device, workers=workers)
    smoothing = m["label_smoothing"]
    loss = LabelSmoothingCrossEntropyFlat(eps=smoothing) if smoothing else CrossEntropyLossFlat()
    values = EpochValues()
    cbs = [values] + ([MixUp(m["mixup_alpha"])] if m["mixup_alpha"] else [])

    set_seed(seed)
    scheduled = stages(config)
    first = scheduled[0] if scheduled else (side(d["train_size"], scale), d["batch_size"])
    net = network(m)
    learn = Learner(dls(*first), net, loss_func=loss, opt_func=optimizer(m), metrics=accuracy, cbs=cbs)
    if limit_batches:
        for dl in learn.dls.loaders:
            dl.n = min(dl.n, limit_batches * dl.bs)
    with_precision(learn, precision, device)
    start = time.perf_counter()
    tick = EpochTick(start)
    learn.add_cb(tick)
    filtered = area_prefilter() if prefilter == "ours" else contextlib.nullcontext()
    with learn.no_bar(), learn.no_logging(), filtered:
        fit(learn, config, epochs, dls)
    wall = time.perf_counter() - start
    losses = values.epoch_losses
    steps = sum(len(e) for e in losses)
    accs, loss_means = values.epoch_accs, [sum(e) / len(e) for e in losses]
    return {"acc": accs, "loss": loss_means, "steps": steps, "s": wall, "epoch_s": tick.epoch_s}


def with_precision(learn: Learner, precision: str, device: str) -> None:
    """fastai's mixed precision as Lightning's ``precision`` names it: its own callbacks on a GPU, ours on the CPU."""
    if precision == "32-true":
        return
    if torch.device(device).type == "cuda":
        learn.to_fp16() if precision == "16-mixed" else learn.to_bf16()
    elif precision == "bf16-mixed":
        learn.add_cb(CPUAutocast())
    else:
        raise ValueError(f"fastai's side runs {precision!r} on a GPU only: pass --precision 32-true or bf16-mixed")
