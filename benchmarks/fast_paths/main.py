"""The command line: options, then the training variants, the compile check and decoding, as asked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import benchmarks.fast_paths
from benchmarks.common import imagenette160, report
from benchmarks.fast_paths.compiled import compile_check
from benchmarks.fast_paths.decode import decode_compare, jpeg_files
from benchmarks.fast_paths.train import VARIANTS, train_variants

ONLY = ("train", "compile", "decode")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the package doc)."""
    parser = argparse.ArgumentParser(
        "python -m benchmarks.fast_paths",
        description=benchmarks.fast_paths.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", default="xresnet18")
    parser.add_argument("--size", type=int, default=64, help="image side (px) of the training-step variants")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one timed apart)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", nargs="+", choices=ONLY, default=list(ONLY))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--compile-sizes", nargs="+", type=int, default=None, help="default: size * 3/4, size")
    parser.add_argument("--images", type=int, default=500, help="JPEGs to decode")
    parser.add_argument("--presize", type=int, default=128, help="decoded square side (px)")
    parser.add_argument("--jpeg-dir", type=Path, default=None, help="default: imagenette2-160/train (extracted once)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    figures: dict[str, Any] = {
        "arch": args.arch,
        "size": args.size,
        "bs": args.bs,
        "steps": args.steps,
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if "train" in args.only:
        figures["train"] = train_variants(args.arch, args.size, args.bs, args.steps, args.warmup, device, args.variants)
    if "compile" in args.only:
        sizes = args.compile_sizes or [args.size * 3 // 4, args.size]
        sizes = [args.size, *(s for s in sizes if s != args.size)]  # timed at --size first, as the variants are
        figures["compile"] = compile_check(args.arch, sizes, args.bs, args.steps, args.warmup, device)
        eager = figures.get("train", {}).get("channels_last+bf16" if device.type == "cuda" else "baseline")
        if eager is not None:  # the eager variant with the same layout and precision
            figures["compile"]["speedup_vs_eager"] = figures["compile"]["ips"] / eager["ips"]
    if "decode" in args.only:
        jpeg_dir = args.jpeg_dir or imagenette160() / "train"
        figures["decode"] = decode_compare(jpeg_files(jpeg_dir, args.images), args.presize, device)
    report(figures)
