"""fastai's side of the CPU benchmarks: the chapter's recipe on fastai's own Learner, given the precision and layout
our side gets, from a first run of its own (the archive extracted the way fastai's ``untar_data`` extracts it).

fastai 2.8's ``MixedPrecision`` (``learn.to_bf16()``) enters ``autocast("cuda")`` only, so on the CPU it trains in
fp32 whatever it is asked: ``CPUAutocast`` is the same callback for the CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.torch_core import to_float

from benchmarks.common import fastai_dataloaders
from imagenette_sota.predict import Precision


class CPUAutocast(Callback):
    """bf16 autocast on the CPU from before each batch to after its loss: fastai's ``MixedPrecision``, for the CPU."""

    order = MixedPrecision.order  # before the callbacks that read the predictions

    def __init__(self) -> None:
        super().__init__()
        self.autocast: torch.autocast | None = None

    def before_batch(self) -> None:
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = to_float(self.pred)  # the loss and the metrics in fp32, as MixedPrecision does

    def after_loss(self) -> None:
        self.leave()

    def after_batch(self) -> None:
        self.leave()  # a batch cancelled before its loss

    def after_fit(self) -> None:
        self.leave()  # a fit cancelled mid-batch

    def leave(self) -> None:
        """Leave the batch's autocast if it is still entered."""
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None


def like_ours(learn, precision: Precision, channels_last: bool = True):
    """``learn`` with our side's layout and precision: the model in channels_last (what fastai's ``ChannelsLast``
    does at ``before_fit``, done now so that ``validate`` and ``get_preds`` see it too) and ``CPUAutocast`` for bf16."""
    if channels_last:
        learn.model.to(memory_format=torch.channels_last)
    if precision == "bf16":
        learn.add_cb(CPUAutocast())
    return learn


def extract(archive: Path, root: Path) -> Path:
    """``archive`` extracted under ``root`` as fastai's ``untar_data`` does after its download; the dataset folder."""
    from fastcore.xtras import untar_dir

    return untar_dir(archive, root, rename=True)


class EpochTick(Callback):
    """Wall seconds since ``start`` after each epoch's validation."""

    order = 60  # after the Recorder (50) has recorded the epoch

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start, self.epoch_s = start, []

    def after_epoch(self) -> None:
        self.epoch_s.append(time.perf_counter() - self.start)


def fastai_run(archive: Path, root: Path, args: argparse.Namespace, precision: Precision) -> dict[str, Any]:
    """A first run of the recipe with fastai's Learner on a fresh ``root``: the preparation (extraction, data and
    learner built) and the ``fit_one_cycle`` timed apart, the validation accuracy after each epoch.

    ``args``: arch, presize, size, bs, lr, epochs, label_smoothing, fastai_workers, nchw, limit_batches.
    """
    from fastai.vision.all import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat, Learner, accuracy, set_seed
    from fastai.vision.models import xresnet as fa_models

    start = time.perf_counter()
    set_seed(0)
    data_dir = extract(archive, root)
    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.fastai_workers)
    if args.limit_batches:  # our --limit-batches: the first batches' items only (a smoke run)
        for dl in (dls.train, dls.valid):
            dl.n = min(dl.n, args.limit_batches * dl.bs)
    loss = LabelSmoothingCrossEntropyFlat(args.label_smoothing) if args.label_smoothing else CrossEntropyLossFlat()
    learn = Learner(dls, getattr(fa_models, args.arch)(n_out=10), loss_func=loss, metrics=accuracy)
    like_ours(learn, precision, channels_last=not args.nchw)
    fit_start = time.perf_counter()
    clock = EpochTick(fit_start)
    with learn.no_bar():
        learn.fit_one_cycle(args.epochs, args.lr, cbs=[clock])
    fit_s = time.perf_counter() - fit_start
    accs = [float(v[2]) for v in learn.recorder.values]
    return {
        "acc": accs[-1],
        "prepare_s": fit_start - start,
        "fit_s": fit_s,
        "epoch_acc": accs,
        "epoch_s": clock.epoch_s,
        "precision": precision,
        "channels_last": not args.nchw,
        "workers": dls.train.fake_l.num_workers,  # (fastai's DataLoader.num_workers is its shard count)
    }


def fastai_tta(data_dir: Path, weights: dict[str, torch.Tensor], args: argparse.Namespace, precision: Precision):
    """fastai's ``validate()`` and ``tta()`` (n=4, beta=0.25) with ``weights`` in its xresnet, timed."""
    from fastai.vision.all import CrossEntropyLossFlat, Learner, accuracy
    from fastai.vision.models import xresnet as fa_models

    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.fastai_workers)
    net = getattr(fa_models, args.arch)(n_out=10)
    net.load_state_dict(weights)  # same keys and shapes as ours (tests/test_xresnet.py)
    learn = like_ours(Learner(dls, net, loss_func=CrossEntropyLossFlat(), metrics=accuracy), precision, not args.nchw)
    figures: dict[str, float] = {}
    with learn.no_bar():
        start = time.perf_counter()
        figures["fastai_plain_acc"] = float(learn.validate()[1])
        figures["fastai_plain_s"] = time.perf_counter() - start
        start = time.perf_counter()
        probs, targets = learn.tta()
        figures["fastai_tta_n4_s"] = time.perf_counter() - start
    figures["fastai_tta_n4_acc"] = accuracy(probs, targets).item()
    print(f"fastai on our weights: plain {figures['fastai_plain_acc']:.4f}, tta {figures['fastai_tta_n4_acc']:.4f}")
    return figures
