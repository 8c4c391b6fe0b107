"""The run: options, then each section in order under the budget (what it measures: benchmarks/gpu/__init__.py)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

import benchmarks.gpu
from benchmarks.common import REPO, report
from benchmarks.gpu.data import build_cache, extract
from benchmarks.gpu.env import env
from benchmarks.gpu.peers import device_fast_paths, fastai_throughput
from benchmarks.gpu.run import JPEG_ARCHIVE, JPEG_MD5, NEEDS, SECTIONS, WEBP_ARCHIVE, WEBP_MD5, Run, rounded
from benchmarks.gpu.throughput import throughput
from benchmarks.gpu.time_to_target import time_to_target


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--smoke`` overrides the sizes for a CPU check in seconds)."""
    parser = argparse.ArgumentParser(
        description=benchmarks.gpu.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "out" / "gpu")))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/imagenette-gpu"), help="extraction folder")
    parser.add_argument("--archive", type=Path, default=None, help="default: the WebP copy (--smoke: --jpegs)")
    parser.add_argument("--md5", default=None, help="of --archive (default: the default archive's; 'none': no check)")
    parser.add_argument("--jpegs", type=Path, default=JPEG_ARCHIVE, help="JPEG archive for the decode comparison")
    parser.add_argument("--decode-images", type=int, default=300, help="JPEGs decoded by fast_paths")
    budget_help = "seconds in all (default 440, --smoke 1800); sections that no longer fit are skipped"
    parser.add_argument("--budget", type=float, default=None, help=budget_help)
    fp32_help = "fp32 NCHW, not bf16 autocast + channels_last (--smoke on a CPU sets it: bf16 convs crawl there)"
    parser.add_argument("--fp32", action="store_true", help=fp32_help)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="xresnet50")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--presize", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(max((os.cpu_count() or 1) - 2, 1), 16))
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches (cuDNN autotuning, compiling)")
    parser.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    parser.add_argument("--t90-config", type=Path, default=REPO / "configs" / "gpu_time_to_90.yaml")
    parser.add_argument("--t90-loader", choices=("workers", "device"), default="workers")
    parser.add_argument("--t90-target", type=float, default=0.90)
    parser.add_argument("--t90-max-s", type=float, default=170.0, help="stop the fit after this many seconds")
    parser.add_argument("--limit-batches", type=int, default=2, help="--smoke: batches per epoch of time_to_90")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU settings on the 300-JPEG archive")
    args = parser.parse_args(argv)
    if args.archive is None:
        args.archive = args.jpegs if args.smoke else WEBP_ARCHIVE
        args.md5 = args.md5 or (JPEG_MD5 if args.smoke else WEBP_MD5)
    args.md5 = None if args.md5 == "none" else args.md5
    args.budget = args.budget or (1800.0 if args.smoke else 440.0)
    if args.smoke:
        args.fp32 = args.fp32 or args.device == "cpu"
        args.arch = "xresnet18"
        args.sizes, args.presize, args.bs = [32], 32, 8
        args.t90_bs, args.t90_epochs = 8, 2  # time_to_90 on the config's structure with these (see time_to_target)
        args.warmup, args.batches, args.workers, args.decode_images = 1, 2, min(args.workers, 2), 40
        args.scratch = args.scratch.with_name(args.scratch.name + "-smoke")
        if args.out == REPO / "benchmarks" / "out" / "gpu":
            args.out = args.out.with_name("gpu-smoke")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    needs = {k: (1 if args.smoke else v) for k, v in NEEDS.items()}
    run = Run(args.out, args.budget)
    run.figures["settings"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not k.startswith("t90")
    }
    print(f"gpu benchmark: sections {args.sections}, budget {args.budget:.0f} s, out {args.out}", flush=True)
    if "env" in args.sections:
        run.section("env", 0, lambda: env(device))

    data: dict[str, Any] = {}

    def prepare() -> dict[str, Any]:
        data["dir"], figures = extract(args.archive, args.md5, args.scratch, args.workers)
        figures["cache_build_s"] = build_cache(data["dir"], args.presize, args.workers)
        figures["folder"] = str(data["dir"])
        print(f"data: {figures}", flush=True)
        return figures

    run.section("data", 0, prepare)
    jpeg_dir: Path | None = None
    if "fast_paths" in args.sections:
        try:
            # a folder of its own: the suite refuses a root that already holds another dataset's folder
            jpegs_scratch = args.scratch.with_name(args.scratch.name + "-jpegs")
            jpeg_dir = extract(args.jpegs, JPEG_MD5, jpegs_scratch, args.workers)[0]
        except Exception as e:
            run.figures["errors"]["jpegs"] = f"{type(e).__name__}: {e}"
    if "dir" not in data:
        print("no data: only env and fast_paths can run", flush=True)
    with_data = {"throughput", "time_to_90", "fastai", "compiled"}
    for name in args.sections:
        if name == "env" or (name in with_data and "dir" not in data):
            continue
        if name == "throughput":
            run.section(name, needs[name], lambda: throughput(args, run, data["dir"], device, compile=False))
        elif name == "compiled":
            run.section(name, needs[name], lambda: throughput(args, run, data["dir"], device, compile=True))
        elif name == "time_to_90":
            later = sum(needs[s] for s in args.sections[args.sections.index(name) + 1 :]) / 2
            limit = min(args.t90_max_s, run.left() - later)
            run.section(
                name,
                needs[name],
                lambda limit=limit: time_to_target(args, run, data["dir"], device, time.perf_counter() + limit),
            )
        elif name == "fastai":
            run.section(name, needs[name], lambda: fastai_throughput(args, run, data["dir"], device))
        elif name == "fast_paths":
            run.section(name, needs[name], lambda: device_fast_paths(args, jpeg_dir, device))
    run.save()
    report(rounded(run.figures))
