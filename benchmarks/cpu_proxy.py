"""The CPU proxy recipe side by side with fastai, plus the model-compute floor, on imagenette2-160 (official val).

    python -m benchmarks.cpu_proxy [--epochs 5 --arch xresnet18 --presize 128 --size 64 --bs 64 --lr 3e-3]
    python -m benchmarks.cpu_proxy --precision 32   # both sides in fp32 (the default on a CPU without bf16 units)
    python -m benchmarks.cpu_proxy --same-work      # + ours doing fastai's work (no cache, its workers)
    python -m benchmarks.cpu_proxy --ramp 48 --tta --skip-fastai  # progressive + TTA rows
    python -m benchmarks.cpu_proxy --mini --epochs 1 --limit-batches 3  # a smoke run on the 300-image archive

Recipe: xresnet18 from scratch, presize 128, 64 px, batch 64, one-cycle at 3e-3, no mixup, no label smoothing,
validation every epoch, the same on both sides. Each side runs on its own default data path (ours: the data module's
cache and worker defaults, ``--cache``/``--workers`` override them; fastai: its default workers,
``--fastai-workers``), and fastai gets our layout and precision: channels_last unless ``--nchw``, and ``--precision``
(default: bf16 where the CPU has bf16 units, else 32: each side's best; bf16 on fastai's side through
``benchmarks.fastai_cpu.CPUAutocast``). Fit times, ours / fastai, of the runs ``ours`` and ``fastai``:
``time_ratio_library`` (the same recipe, precision and epochs) and ``time_ratio_best_of_each`` (each side's best
recipe at its best precision): the same two runs here, where both sides run the proxy recipe, except that
``--ramp`` and ``--val-size`` change our recipe alone, and then there is no library ratio. ``library_runs`` and
``best_of_each_runs`` name the runs each ratio divides.

Each run is a first run on a fresh data root: ``*_prepare_s`` (the archive extracted, our cache built, the data and
model set up) beside ``*_fit_s``, and ``*_first_run_s``, both; ``*_first_run`` ratios of the latter. Memory: the
peak of the process and all its children summed (``*_peak_rss_gib``, ``*_peak_pss_gib``: common.PeakMemory).
The floor is (train-step time x train steps) + (eval-step time x eval steps) measured on random tensors of the same
shapes at ``--precision``: what the model's arithmetic alone costs here. ``--ramp MIN``: progressive resizing, the
train size ramps from MIN px (epoch 0) to ``--size`` (last epoch), validating at ``--size``. ``--tta``: on our
trained weights, plain accuracy at a few validation sizes, then TTA (flip, the training augmentation n=4, five
crops), each timed; and fastai's own ``validate()`` and ``tta()`` on the same weights loaded into its xresnet.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L

from benchmarks.common import (
    TRAINER_PRECISION,
    PeakMemory,
    add_precision_argument,
    archive,
    fresh_root,
    imagenette160,
    ratio,
    report,
    rounded,
    with_first_run,
)
from benchmarks.floor import floor_seconds
from imagenette_sota import models, quiet
from imagenette_sota.callbacks import ProgressiveResize, Ramp, tta
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.cache import CachedImages
from imagenette_sota.hardware import cpu_bf16
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.predict import Precision
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


def ours(
    root: Path, args: argparse.Namespace, precision: Precision
) -> tuple[dict, ImagenetteClassifier, ImagenetteDataModule]:
    """A first run of the recipe with this suite on a fresh ``root``: the preparation (extraction, the cache, setup)
    and the fit timed apart, accuracy per epoch; and the trained model and data."""
    start = time.perf_counter()
    L.seed_everything(0)
    path, md5 = archive(args.mini)
    dm = ImagenetteDataModule(
        root=root,
        url=str(path),
        md5=md5,
        presize=args.presize,
        train_size=args.size,
        val_size=args.val_size or args.size,  # with --ramp: validation at the final size
        batch_size=args.bs,
        val_batch_size=args.bs,
        num_workers=args.workers,
        cache=args.cache,
    )
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
        precision=TRAINER_PRECISION[precision],
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=callbacks,
    )
    trainer.fit(model, dm)  # prepare_data (extraction, cache build) and setup, then on_fit_start starts the clock
    run = {
        "acc": clock.accs[-1],
        "prepare_s": clock.start - start,
        "fit_s": time.perf_counter() - clock.start,
        "epoch_acc": clock.accs,
        "epoch_s": clock.times,
        "val_s": clock.val_s,
        "precision": precision,
        "channels_last": not args.nchw,
        "cache": isinstance(dm.train_set, CachedImages),  # what the defaults (or the options) came to
        "workers": trainer.train_dataloader.num_workers,
    }
    return run, model, dm


def ours_tta(
    model: ImagenetteClassifier, dm: ImagenetteDataModule, args: argparse.Namespace, precision: Precision
) -> dict[str, float]:
    """On the trained weights: plain accuracy at a few validation sizes, then each TTA mode; all timed."""
    trainer = quiet.trainer(accelerator="cpu", precision=TRAINER_PRECISION[precision])
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
    p.add_argument("--limit-batches", type=int, help="train/val batches per epoch, both sides (smoke runs only)")
    p.add_argument("--skip-fastai", action="store_true")
    p.add_argument("--skip-ours", action="store_true", help="only the floor and fastai (ours measured apart)")
    add_precision_argument(p)
    return p


def recipe(args: argparse.Namespace) -> dict:
    """The recipe's settings and its model-compute floor at ``--precision``, printed as they are measured."""
    keys = ("arch", "epochs", "presize", "size", "val_size", "ramp", "bs", "lr", "label_smoothing", "workers", "cache")
    figures: dict = {k: getattr(args, k) for k in keys} | {"sizes": epoch_sizes(args), "channels_last": not args.nchw}
    figures |= {"mini": args.mini, "bf16_units": cpu_bf16()}  # (fastai's workers: each fastai run's)
    figures["precision"] = args.precision
    val_size = args.val_size or args.size
    bf16 = args.precision == "bf16"
    figures |= floor_seconds(
        args.arch, figures["sizes"], args.bs, args.bs, val_size, channels_last=not args.nchw, mini=args.mini, bf16=bf16
    )
    print(f"floor: {figures['floor_s']:.0f} s", flush=True)
    return figures


def ours_first_run(name: str, args: argparse.Namespace, tta_rows: bool = False) -> dict:
    """Our side's first run as ``name_*`` figures; with ``tta_rows``, the TTA rows on its weights (and fastai's)."""
    with fresh_root() as root:
        with PeakMemory() as memory:
            run, model, dm = ours(root, args, args.precision)
        print(f"{name}: {run['acc']:.4f} in {run['fit_s']:.0f} s (+{run['prepare_s']:.0f} s first)", flush=True)
        figures = with_first_run(name, run, memory)
        if tta_rows:
            figures |= ours_tta(model, dm, args, args.precision)
            try:
                from benchmarks.fastai_cpu import fastai_tta

                weights = model.model.state_dict()
                figures |= fastai_tta(imagenette160(args.mini), weights, args, args.precision)
            except ImportError:
                print("fastai is not installed (make install-bench): no fastai tta row", flush=True)
    return figures


def fastai_first_run(name: str, args: argparse.Namespace) -> dict:
    """fastai's side's first run as ``name_*`` figures."""
    from benchmarks.fastai_cpu import fastai_run

    with fresh_root() as root, PeakMemory() as memory:
        run = fastai_run(archive(args.mini)[0], root, args, args.precision)
    print(f"{name}: {run['acc']:.4f} in {run['fit_s']:.0f} s (+{run['prepare_s']:.0f} s first)", flush=True)
    return with_first_run(name, run, memory)


def main() -> None:
    p = parser()
    p.add_argument("--tta", action="store_true", help="TTA rows on our weights (and fastai's tta on them)")
    same_help = "after ours on its defaults, ours again doing fastai's work (no cache, fastai's workers)"
    p.add_argument("--same-work", action="store_true", help=same_help)
    args = p.parse_args()
    figures = recipe(args)
    if not args.skip_ours:
        figures |= ours_first_run("ours", args, args.tta)
        figures["ours_vs_floor"] = figures["ours_fit_s"] / figures["floor_s"]
        if args.same_work:
            figures |= same_work(args)
    if not args.skip_fastai:
        figures |= fastai_first_run("fastai", args)
        figures["fastai_vs_floor"] = figures["fastai_fit_s"] / figures["floor_s"]
    same_recipe = args.ramp is None and args.val_size in (None, args.size)  # else only our recipe changed
    if not same_recipe:
        print("--ramp / --val-size change our recipe alone: no library ratio", flush=True)
    for key in ("library", "best_of_each") if same_recipe else ("best_of_each",):
        figures[f"{key}_runs"] = ["ours", "fastai"]
        figures[f"time_ratio_{key}"] = ratio(figures, ("ours", "fastai"), "fit_s")
        figures[f"time_ratio_{key}_first_run"] = ratio(figures, ("ours", "fastai"), "first_run_s")
    if "ours_acc" in figures and "fastai_acc" in figures:
        figures["acc_diff_vs_fastai"] = figures["ours_acc"] - figures["fastai_acc"]
    if "same_work_ours_fit_s" in figures:
        figures["time_ratio_same_work"] = ratio(figures, ("same_work_ours", "fastai"), "fit_s")
    report(rounded(figures))


def same_work(args: argparse.Namespace) -> dict:
    """Ours again doing fastai's work: decoding every epoch (no cache) with fastai's worker count."""
    from fastai.torch_core import defaults  # fastai's own default worker count, not a copy of its rule

    workers = args.fastai_workers if args.fastai_workers is not None else defaults.cpus
    like = argparse.Namespace(**vars(args) | {"cache": False, "workers": workers})
    return ours_first_run("same_work_ours", like)


if __name__ == "__main__":
    main()
