"""The fastai and fast_paths sections: fastai's Learner side by side, and benchmarks.fast_paths on the device."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import fast_paths
from benchmarks.gpu.run import NEEDS, Run, free


def fastai_throughput(args: argparse.Namespace, run: Run, data_dir: Path, device: torch.device) -> dict[str, Any]:
    """fastai Learner images/s at each size (bf16 and channels_last on CUDA), and ours / fastai."""
    import mimetypes

    mimetypes.add_type("image/webp", ".webp")  # before fastai's import: its image_extensions come from mimetypes
    try:
        from fastai.callback.core import Callback, CancelFitException
        from fastai.vision.all import CrossEntropyLossFlat, Learner
        from fastai.vision.models import xresnet as fa_models
    except ImportError as e:
        return {"skipped": f"fastai does not import: {e}"}
    import fastai

    from benchmarks.common import fastai_dataloaders

    class Clock(Callback):
        order = 99

        def before_fit(self) -> None:
            self.seen, self.start, self.images, self.seconds = 0, 0.0, 0, 0.0

        def after_batch(self) -> None:
            if not self.training:
                return
            self.seen += 1
            if self.seen == args.warmup:
                fast_paths.sync(device)
                self.start = time.perf_counter()
            elif self.seen > args.warmup:
                self.images += len(self.yb[0])
                if self.seen == args.warmup + args.batches:
                    fast_paths.sync(device)
                    self.seconds = time.perf_counter() - self.start
                    raise CancelFitException

    out: dict[str, Any] = {"fastai": fastai.__version__}
    for size in args.sizes:
        if len(out) > 1 and run.left() < NEEDS["fastai"] / 2:
            out[str(size)] = f"skipped: {run.left():.0f} s left"
            continue
        free(device)
        dls = fastai_dataloaders(data_dir, args.presize, size, args.bs, args.workers, device=str(device))
        clock = Clock()
        learn = Learner(dls, getattr(fa_models, args.arch)(n_out=10), loss_func=CrossEntropyLossFlat(), cbs=clock)
        if device.type == "cuda" and not args.fp32:
            learn = learn.to_bf16().to_channelslast()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 3e-3)
        figures: dict[str, Any] = {"ips": clock.images / clock.seconds, "peak_gib": fast_paths.peak_gib(device)}
        ours = run.figures.get("throughput", {}).get(str(size), {}).get("e2e_workers")
        if isinstance(ours, dict):
            figures["ours_vs_fastai"] = ours["ips"] / figures["ips"]
        out[str(size)] = figures
        print(f"fastai {size} px: {figures}", flush=True)
        del learn, dls
    return out


def device_fast_paths(args: argparse.Namespace, jpeg_dir: Path | None, device: torch.device) -> dict[str, Any]:
    """benchmarks.fast_paths on this device at the first size: layout/precision/optimizer variants, decoding."""
    size = args.sizes[0]
    out: dict[str, Any] = {"arch": args.arch, "size": size, "bs": args.bs}
    free(device)
    variants = ("baseline", "adamw_foreach") if args.fp32 else fast_paths.VARIANTS
    out["train"] = fast_paths.train_variants(args.arch, size, args.bs, args.batches, args.warmup, device, variants)
    if jpeg_dir is not None:
        files = fast_paths.jpeg_files(jpeg_dir, args.decode_images)
        out["decode"] = fast_paths.decode_compare(files, args.presize, device)
    return out
