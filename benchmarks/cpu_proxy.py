"""The CPU proxy recipe side by side with fastai, plus the model-compute floor, on imagenette2-160 (official val).

    python -m benchmarks.cpu_proxy [--epochs 5 --arch xresnet18 --presize 128 --size 64 --bs 64 --lr 3e-3]

Recipe: xresnet18 from scratch, presize 128, 64 px, batch 64, one-cycle at 3e-3, no mixup, no label
smoothing, validation every epoch. The floor is (train-step time x train steps) + (eval-step time x eval
steps) measured on random tensors of the same shapes: what the model's arithmetic alone costs here.
Last line: one JSON object (accuracies, wall times, ``time_ratio_vs_fastai``, ``ours_vs_floor``).
"""

from __future__ import annotations

import argparse
import math
import time

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks.common import fastai_dataloaders, imagenette160, peak_rss_gib, report
from imagenette_sota import models
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.module import ImagenetteClassifier
from imagenette_sota.schedule import adam

TRAIN_IMAGES, VAL_IMAGES = 9469, 3925


def floor_seconds(arch: str, size: int, bs: int, epochs: int, val_bs: int, reps: int = 8) -> dict[str, float]:
    """Model-compute floor: per-step times on random tensors x the recipe's step counts."""
    model = getattr(models, arch)(10)
    opt = adam(model, 3e-3)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))

    def train_step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    xv = torch.randn(val_bs, 3, size, size)

    @torch.inference_mode()
    def eval_step() -> None:
        model(xv)

    def per_step(step, train: bool) -> float:
        model.train(train)
        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - start) / reps

    t_train, t_eval = per_step(train_step, True), per_step(eval_step, False)
    steps_train, steps_eval = TRAIN_IMAGES // bs * epochs, math.ceil(VAL_IMAGES / val_bs) * epochs
    return {
        "floor_train_ips": bs / t_train,
        "floor_eval_ips": val_bs / t_eval,
        "floor_s": t_train * steps_train + t_eval * steps_eval,
    }


def ours(data_dir, args: argparse.Namespace) -> dict[str, float]:
    """Wall time and final validation accuracy of the recipe with this suite."""
    L.seed_everything(0)
    dm = ImagenetteDataModule(
        root=data_dir,
        presize=args.presize,
        train_size=args.size,
        batch_size=args.bs,
        val_batch_size=args.bs,
        num_workers=args.workers,
        cache=args.cache,
    )
    dm.prepare_data()  # a cache is built once, before the clock starts (later runs find it on disk)
    model = ImagenetteClassifier(backbone=getattr(models, args.arch), num_classes=10, lr=args.lr)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    wall = time.perf_counter() - start
    return {"ours_acc": trainer.callback_metrics["val/acc"].item(), "ours_s": wall}


def fastai_run(data_dir, args: argparse.Namespace) -> dict[str, float]:
    """Wall time and final validation accuracy of the same recipe with fastai's Learner."""
    from fastai.vision.all import CrossEntropyLossFlat, Learner, accuracy, set_seed
    from fastai.vision.models import xresnet as fa_models

    set_seed(0)
    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.workers)
    learn = Learner(dls, getattr(fa_models, args.arch)(n_out=10), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    start = time.perf_counter()
    with learn.no_bar():
        learn.fit_one_cycle(args.epochs, args.lr)
    wall = time.perf_counter() - start
    return {"fastai_acc": float(learn.recorder.values[-1][2]), "fastai_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="xresnet18")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--presize", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="our side reads the decode-once cache")
    parser.add_argument("--skip-fastai", action="store_true")
    parser.add_argument("--skip-ours", action="store_true", help="only the floor and fastai (ours measured apart)")
    args = parser.parse_args()

    data_dir = imagenette160()
    figures: dict = {k: getattr(args, k) for k in ("arch", "epochs", "presize", "size", "bs", "lr", "workers", "cache")}
    figures |= floor_seconds(args.arch, args.size, args.bs, args.epochs, val_bs=args.bs)
    print(f"floor: {figures['floor_s']:.0f} s", flush=True)
    if not args.skip_ours:
        figures |= ours(data_dir, args)
        figures["ours_peak_rss_gib"] = peak_rss_gib()
        figures["ours_vs_floor"] = figures["ours_s"] / figures["floor_s"]
        print(f"ours: {figures['ours_acc']:.4f} in {figures['ours_s']:.0f} s", flush=True)
    if not args.skip_fastai:
        figures |= fastai_run(data_dir, args)
        figures["fastai_vs_floor"] = figures["fastai_s"] / figures["floor_s"]
        print(f"fastai: {figures['fastai_acc']:.4f} in {figures['fastai_s']:.0f} s", flush=True)
    if "ours_s" in figures and "fastai_s" in figures:
        figures["time_ratio_vs_fastai"] = figures["ours_s"] / figures["fastai_s"]
        figures["acc_diff_vs_fastai"] = figures["ours_acc"] - figures["fastai_acc"]
    report({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
