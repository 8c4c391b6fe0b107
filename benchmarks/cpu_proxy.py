"""The CPU proxy recipe side by side with fastai, plus the model-compute floor, on imagenette2-160 (official val).

    python -m benchmarks.cpu_proxy [--epochs 5 --arch xresnet18 --presize 128 --size 64 --bs 64 --lr 3e-3]
    python -m benchmarks.cpu_proxy --same-work   # + ours doing fastai's work: "best of each" and "same work" rows
    python -m benchmarks.cpu_proxy --ramp 48 --tta --skip-fastai  # progressive + TTA rows
    python -m benchmarks.cpu_proxy --mini --epochs 1 --limit-batches 3  # a smoke run on the 300-image archive

With no arguments both sides run on the defaults a user gets: ours with ImagenetteDataModule's own cache and worker
defaults (``--cache``/``--no-cache``, ``--workers`` override them), fastai with its own default workers
(``--fastai-workers``). Each side's peak resident memory is reported (``*_peak_rss_gib``); our wall time starts after
``prepare_data`` (``ours_prepare_s``: the one-time cache build of a first run at a presize; later runs find it).

Recipe: xresnet18 from scratch, presize 128, 64 px, batch 64, one-cycle at 3e-3, no mixup, no label
smoothing, validation every epoch. The floor is (train-step time x train steps) + (eval-step time x eval
steps) measured on random tensors of the same shapes: what the model's arithmetic alone costs here.
``--ramp MIN``: progressive resizing, the train size ramps from MIN px (epoch 0) to ``--size`` (last epoch),
validating at ``--size``. ``--tta``: on our trained weights, plain accuracy at a few validation sizes, then
TTA (flip, the training augmentation n=4, five crops), each timed; and, when fastai is installed, fastai's own
``validate()`` and ``tta()`` on the same weights loaded into its xresnet.
Last line: one JSON object (accuracies, wall times, ``time_ratio_vs_fastai``, ``ours_vs_floor``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import lightning as L

from benchmarks.common import fastai_dataloaders, imagenette160, peak_rss_gib, report, reset_peak_rss
from benchmarks.floor import floor_seconds
from imagenette_sota import models, quiet
from imagenette_sota.callbacks import ProgressiveResize, Ramp, tta
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.cache import CachedImages
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import Cycle
from imagenette_sota.tta import TTASettings


def epoch_sizes(args: argparse.Namespace) -> list[int]:
    """Train image side per epoch: ``--size`` throughout, or the ``--ramp`` from MIN to ``--size``."""
    if args.ramp is None:
        return [args.size] * args.epochs
    return [ramp(args).size_at(e) for e in range(args.epochs)]


def ramp(args: argparse.Namespace) -> Ramp:
    """The progressive-resizing ramp of ``--ramp MIN``: MIN at epoch 0 to ``--size`` at the last epoch."""
    return Ramp(args.ramp, args.size, start_epoch=0, end_epoch=args.epochs - 1, multiple=8)


class EpochClock(L.Callback):
    """Wall seconds since fit start, validation seconds and accuracy, at the end of every validation epoch."""

    def __init__(self) -> None:
        self.start, self.val_start, self.times, self.val_s, self.accs = 0.0, 0.0, [], [], []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            now = time.perf_counter()
            self.times.append(now - self.start)
            self.val_s.append(now - self.val_start)
            self.accs.append(trainer.callback_metrics["val/acc"].item())
            print(f"epoch {trainer.current_epoch}: {self.accs[-1]:.4f} at {self.times[-1]:.0f} s", flush=True)


def ours(data_dir, args: argparse.Namespace) -> tuple[dict, ImagenetteClassifier, ImagenetteDataModule]:
    """Wall time and validation accuracy (per epoch) of the recipe with this suite, and the trained model and data."""
    L.seed_everything(0)
    dm = ImagenetteDataModule(
        root=data_dir,
        presize=args.presize,
        train_size=args.size,
        val_size=args.val_size or args.size,  # with --ramp: validation at the final size
        batch_size=args.bs,
        val_batch_size=args.bs,
        num_workers=args.workers,
        cache=args.cache,
    )
    prepare = time.perf_counter()
    dm.prepare_data()  # a cache is built once, before the clock starts (later runs find it on disk)
    prepare_s = time.perf_counter() - prepare  # reported apart: the first run at a presize pays the cache build
    model = ImagenetteClassifier(
        backbone=getattr(models, args.arch),
        num_classes=10,
        cycle=Cycle(args.lr),
        label_smoothing=args.label_smoothing,
        channels_last=not args.nchw,
    )
    clock = EpochClock()
    callbacks: list[L.Callback] = [clock]
    if args.ramp:
        callbacks.append(ProgressiveResize(ramp=ramp(args)))
    trainer = quiet.trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - start
    run = {"ours_acc": clock.accs[-1], "ours_s": wall, "ours_epoch_acc": clock.accs, "ours_epoch_s": clock.times}
    run["ours_val_s"] = clock.val_s
    run["ours_prepare_s"] = prepare_s
    run["ours_cache"] = isinstance(dm.train_set, CachedImages)  # what the defaults (or the options) came to
    run["ours_workers"] = trainer.train_dataloader.num_workers
    return run, model, dm


def ours_tta(model: ImagenetteClassifier, dm: ImagenetteDataModule, args: argparse.Namespace) -> dict[str, float]:
    """On the trained weights: plain accuracy at a few validation sizes, then each TTA mode; all timed."""
    trainer = quiet.trainer(accelerator="cpu")
    figures: dict[str, float] = {}
    for val_size in sorted({args.size, round(args.size * 1.125), round(args.size * 1.25), args.val_size or args.size}):
        dm.val_size = val_size
        start = time.perf_counter()
        metrics = trainer.validate(model, dm, verbose=False)[0]
        figures[f"plain_val{val_size}_acc"] = metrics["val/acc"]
        figures[f"plain_val{val_size}_s"] = time.perf_counter() - start
        print(f"plain at {val_size} px: {metrics['val/acc']:.4f}", flush=True)
    dm.val_size = args.val_size
    modes = {"flip": TTASettings(mode="flip"), "n4": TTASettings(n=4), "five_crop": TTASettings(mode="five_crop")}
    for name, settings in modes.items():
        start = time.perf_counter()
        probs, targets = tta(trainer, model, dm, settings)
        figures[f"tta_{name}_acc"] = (probs.argmax(1) == targets).float().mean().item()
        figures[f"tta_{name}_s"] = time.perf_counter() - start
        print(f"TTA {name}: {figures[f'tta_{name}_acc']:.4f}", flush=True)
    return figures


def fastai_tta(data_dir, model: ImagenetteClassifier, args: argparse.Namespace) -> dict[str, float]:
    """fastai's ``validate()`` and ``tta()`` (n=4, beta=0.25) on our trained weights, in its xresnet."""
    from fastai.vision.all import CrossEntropyLossFlat, Learner, accuracy
    from fastai.vision.models import xresnet as fa_models

    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.fastai_workers)
    net = getattr(fa_models, args.arch)(n_out=10)
    net.load_state_dict(model.model.state_dict())  # same keys and shapes (tests/test_xresnet.py)
    learn = Learner(dls, net, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
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


def fastai_run(data_dir, args: argparse.Namespace) -> dict:
    """Wall time and validation accuracy (per epoch) of the recipe with fastai's Learner, fixed at ``--size``."""
    from fastai.vision.all import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat, Learner, accuracy, set_seed
    from fastai.vision.models import xresnet as fa_models

    # fit_one_cycle has no size ramp and validates at the train size: a --ramp or --val-size applies to ours only.
    set_seed(0)
    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.fastai_workers)
    loss = LabelSmoothingCrossEntropyFlat(args.label_smoothing) if args.label_smoothing else CrossEntropyLossFlat()
    learn = Learner(dls, getattr(fa_models, args.arch)(n_out=10), loss_func=loss, metrics=accuracy)
    start = time.perf_counter()
    epoch_s = []

    def tick() -> None:
        epoch_s.append(time.perf_counter() - start)

    with learn.no_bar():
        learn.add_cb(_fastai_epoch_clock(tick))
        learn.fit_one_cycle(args.epochs, args.lr)
    wall = time.perf_counter() - start
    accs = [float(v[2]) for v in learn.recorder.values]
    return {"fastai_acc": accs[-1], "fastai_s": wall, "fastai_epoch_acc": accs, "fastai_epoch_s": epoch_s}


def _fastai_epoch_clock(tick: Callable[[], None]):
    """A fastai callback calling ``tick`` after each epoch's validation."""
    from fastai.callback.core import Callback

    class EpochTick(Callback):
        order = 60  # after the Recorder (50) has recorded the epoch

        def after_epoch(self) -> None:
            tick()

    return EpochTick()


def parser() -> argparse.ArgumentParser:
    """The recipe's options (shared with cpu_time_to_accuracy)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="xresnet18")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--presize", type=int, default=128)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--val-size", type=int, help="validation side (px); default: --size")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--workers", type=int, help="our loader workers (default: the data module's for this machine)")
    p.add_argument("--fastai-workers", type=int, help="fastai's loader workers (default: fastai's own)")
    cache_help = "our side reads the decode-once cache, or not (default: the data module's: on when it fits)"
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None, help=cache_help)
    p.add_argument("--mini", action="store_true", help="the 300-image archive (smoke runs)")
    p.add_argument("--nchw", action="store_true", help="our model in contiguous NCHW, not the default channels_last")
    p.add_argument("--ramp", type=int, metavar="MIN", help="progressive resizing from MIN px to --size")
    p.add_argument("--limit-batches", type=int, help="train/val batches per epoch of our fit (smoke runs only)")
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-ours", action="store_true", help="only the floor and fastai (ours measured apart)")
    return p


def recipe(args: argparse.Namespace) -> dict:
    """The recipe's settings and its model-compute floor, printed as they are measured."""
    keys = ("arch", "epochs", "presize", "size", "val_size", "ramp", "bs", "lr", "label_smoothing", "workers", "cache")
    figures: dict = {k: getattr(args, k) for k in keys} | {"sizes": epoch_sizes(args), "channels_last": not args.nchw}
    figures |= {"fastai_workers": args.fastai_workers, "mini": args.mini}
    val_size = args.val_size or args.size
    figures |= floor_seconds(
        args.arch, figures["sizes"], args.bs, args.bs, val_size, channels_last=not args.nchw, mini=args.mini
    )
    print(f"floor: {figures['floor_s']:.0f} s", flush=True)
    return figures


def main() -> None:
    p = parser()
    p.add_argument("--tta", action="store_true", help="TTA rows on our weights (and fastai's tta on them)")
    same_help = "after ours on its defaults, ours again doing fastai's work (no cache, fastai's workers, NCHW)"
    p.add_argument("--same-work", action="store_true", help=same_help)
    args = p.parse_args()
    data_dir = imagenette160(args.mini)
    figures = recipe(args)
    if not args.skip_ours:
        reset_peak_rss()
        run, model, dm = ours(data_dir, args)
        figures |= run
        figures["ours_peak_rss_gib"] = peak_rss_gib()
        figures["ours_vs_floor"] = figures["ours_s"] / figures["floor_s"]
        print(f"ours: {figures['ours_acc']:.4f} in {figures['ours_s']:.0f} s", flush=True)
        if args.tta:
            figures |= ours_tta(model, dm, args)
            try:
                figures |= fastai_tta(data_dir, model, args)
            except ImportError:
                print("fastai is not installed (make install-bench): no fastai tta row", flush=True)
    if args.same_work and not args.skip_ours:
        figures |= same_work(data_dir, args)
    if not args.skip_fastai:
        reset_peak_rss()
        figures |= fastai_run(data_dir, args)
        figures["fastai_peak_rss_gib"] = peak_rss_gib()  # its loader processes included once they have ended
        figures["fastai_vs_floor"] = figures["fastai_s"] / figures["floor_s"]
        print(f"fastai: {figures['fastai_acc']:.4f} in {figures['fastai_s']:.0f} s", flush=True)
    if "ours_s" in figures and "fastai_s" in figures:
        figures["time_ratio_vs_fastai"] = figures["ours_s"] / figures["fastai_s"]
        figures["acc_diff_vs_fastai"] = figures["ours_acc"] - figures["fastai_acc"]
    if "same_work_ours_s" in figures and "fastai_s" in figures:
        figures["same_work_time_ratio_vs_fastai"] = figures["same_work_ours_s"] / figures["fastai_s"]
    report(rounded(figures))


def same_work(data_dir, args: argparse.Namespace) -> dict:
    """Ours again doing fastai's work: decoding every epoch (no cache) with fastai's worker count, in NCHW."""
    from fastai.torch_core import defaults  # fastai's own default worker count, not a copy of its rule

    workers = args.fastai_workers if args.fastai_workers is not None else defaults.cpus
    like = argparse.Namespace(**vars(args) | {"cache": False, "workers": workers, "nchw": True})
    reset_peak_rss()
    run, _, _ = ours(data_dir, like)
    print(f"ours, same work: {run['ours_acc']:.4f} in {run['ours_s']:.0f} s", flush=True)
    return {f"same_work_{k}": v for k, v in run.items()} | {"same_work_ours_peak_rss_gib": peak_rss_gib()}


def rounded(figures: dict) -> dict:
    """Floats (also inside lists) to 4 decimals, for the JSON line."""

    def r(v):
        return round(v, 4) if isinstance(v, float) else [r(x) for x in v] if isinstance(v, list) else v

    return {k: r(v) for k, v in figures.items()}


if __name__ == "__main__":
    main()
