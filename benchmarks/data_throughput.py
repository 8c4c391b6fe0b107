"""Training-data throughput (images/s) of this suite's pipeline vs fastai's DataBlock, in the same run.

    python benchmarks/data_throughput.py [--presize 128 --size 64 --bs 64 --workers 2 --epochs 1]

Figures: (a) our loader to uint8 batches, (b) our batch augmentation alone (on this machine's device),
(c) the whole training pipeline (loader + augmentation + normalization), (d) fastai's DataBlock with
``Resize(presize)``, ``aug_transforms(size, min_scale=0.75)`` and ``Normalize`` (its ``dls.train``).
The same figures with the decode-once cache (``cached_*``; its one-time build is timed apart). Last line:
one JSON object, with ``ratio_vs_fastai`` = (c) / (d) and ``cached_ratio_vs_fastai``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import fastai_dataloaders, imagenette160, images_per_second, report
from imagenette_sota.data import ImagenetteDataModule


def ours(data_dir, args: argparse.Namespace, cache: bool = False) -> dict[str, float]:
    """(a), (b), (c) for ImagenetteDataModule on ``data_dir`` (decoding every epoch, or from the cache)."""
    dm = ImagenetteDataModule(
        root=data_dir,
        presize=args.presize,
        train_size=args.size,
        batch_size=args.bs,
        num_workers=args.workers,
        cache=cache,
    )
    start = time.perf_counter()
    dm.prepare_data()  # builds the cache if asked and absent
    build_s = time.perf_counter() - start
    dm.setup("fit")
    loader = dm.train_dataloader()  # persistent workers: the warm-up epoch below starts them once
    images_per_second(loader, lambda b: len(b[1]), warmup=len(loader) - 1)
    loader_ips = max(images_per_second(loader, lambda b: len(b[1])) for _ in range(args.epochs))

    x, _ = next(iter(loader))
    x = x.to(args.device)
    dm.train_transform(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0:
        dm.train_transform(x)
        n += len(x)
    augment_ips = n / (time.perf_counter() - start)

    def whole(batch) -> int:
        xb, yb = batch
        out = dm.train_transform(xb.to(args.device, non_blocking=True))
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        return len(yb)

    pipeline_ips = max(images_per_second(loader, whole) for _ in range(args.epochs))
    figures = {"ours_loader_ips": loader_ips, "ours_augment_ips": augment_ips, "ours_pipeline_ips": pipeline_ips}
    if cache:
        return {"cached_build_s": build_s} | {k.replace("ours_", "cached_"): v for k, v in figures.items()}
    return figures


def fastai_pipeline(data_dir, args: argparse.Namespace) -> float:
    """(d): fastai's DataBlock pipeline with the same presize, size, batch size and workers."""
    dls = fastai_dataloaders(data_dir, args.presize, args.size, args.bs, args.workers, device=args.device)
    return max(images_per_second(dls.train, lambda b: len(b[1])) for _ in range(args.epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presize", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per figure (the best is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-fastai", action="store_true")
    args = parser.parse_args()

    data_dir = imagenette160()
    figures = {
        "presize": args.presize,
        "size": args.size,
        "bs": args.bs,
        "workers": args.workers,
        "device": args.device,
    }
    figures |= ours(data_dir, args)
    figures |= ours(data_dir, args, cache=True)
    for key in ("ours_loader_ips", "ours_augment_ips", "ours_pipeline_ips", "cached_loader_ips", "cached_pipeline_ips"):
        print(f"{key}: {figures[key]:.0f} images/s", flush=True)
    if not args.skip_fastai:
        figures["fastai_pipeline_ips"] = fastai_pipeline(data_dir, args)
        figures["ratio_vs_fastai"] = figures["ours_pipeline_ips"] / figures["fastai_pipeline_ips"]
        figures["cached_ratio_vs_fastai"] = figures["cached_pipeline_ips"] / figures["fastai_pipeline_ips"]
        print(f"fastai_pipeline_ips: {figures['fastai_pipeline_ips']:.0f} images/s", flush=True)
    report({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
