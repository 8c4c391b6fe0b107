"""Each fast-path switch against the default, in images/s: memory layout, bf16, torch.compile, AdamW kernel, decoding.

    python -m benchmarks.fast_paths [--arch xresnet18 --size 64 --bs 64 --steps 10 --warmup 3 --device cpu]
    python -m benchmarks.fast_paths --only compile --compile-sizes 48 64
    python -m benchmarks.fast_paths --only decode --images 500 --presize 128
    python -m benchmarks.fast_paths --device cuda --arch xresnet50 --size 128 --bs 256

Training step: forward, cross entropy, backward and an AdamW step (fastai's hyperparameters, as
``imagenette_sota.schedule.adam``) on random tensors of the given shape, a fresh model per variant, timed
over ``--steps`` steps after ``--warmup`` steps. ``baseline`` is fp32, contiguous (NCHW), the fused AdamW kernel;
each other variant changes one switch (``channels_last+bf16`` two). The suite's defaults follow these figures:
channels_last (it won on the CPU and is the tensor-core layout), fused AdamW, fp32 on the CPU, no compile on the CPU.

- ``channels_last``: NHWC model and inputs; ``bf16``: ``torch.autocast`` in bfloat16;
- ``adamw_foreach`` / ``adamw_single``: the multi-tensor / per-tensor AdamW instead of the fused kernel (each
  variant also reports ``opt_ms``, the optimizer step alone, and the baseline its own);
- ``compile`` (``--only compile`` or by default): ``model.compile()`` as ``ImagenetteClassifier(compile=True)``
  does (on CUDA with channels_last + bf16, on a CPU the baseline's fp32 NCHW): the first step's wall time
  (``compile_s``), images/s after warm-up, then each size of a progressive schedule (``--compile-sizes``)
  warmed up once and the sizes alternated step by step: ``graphs_in_warmup`` counts the graphs dynamo built
  (one per size, the first included), ``graphs_after_warmup`` (new graphs) and ``frames_after_warmup`` (cache
  misses) should be 0, and ``slowest_step_vs_median`` near 1 (it is noisy on a busy machine).

Decoding (``--images`` real JPEGs of imagenette2-160, spread over the classes): the suite's path
(``dataset.open_rgb`` + ``dataset.presize``, PIL, centre crop) vs ``torchvision.io.read_file`` +
``decode_jpeg`` on the whole list at once (on ``--device``: nvJPEG on CUDA) + centre crop +
``torchvision.transforms.v2.functional.resize`` (bilinear, antialias), both to ``--presize`` px uint8, reading
the files included; ``torchvision_decode_only_ips`` is read_file + decode_jpeg alone. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import report
from imagenette_sota import models
from imagenette_sota.optim import BETAS, EPS
from imagenette_sota.schedule import adam, param_groups

VARIANTS = ("baseline", "channels_last", "bf16", "channels_last+bf16", "adamw_foreach", "adamw_single")
ONLY = ("train", "compile", "decode")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset, GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def build(arch: str, device: torch.device, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """A fresh ``arch`` with 10 outputs on ``device`` (seed 0), NHWC and/or compiled in place if asked."""
    torch.manual_seed(0)
    model = getattr(models, arch)(10).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place, like ImagenetteClassifier(compile=True)
    return model


def optimizer(model: nn.Module, kernel: str = "fused", lr: float = 3e-3) -> torch.optim.Optimizer:
    """The suite's AdamW (``schedule.adam``) for ``fused``; the same hyperparameters with the ``foreach`` or
    ``single`` (per-tensor loop) implementation otherwise."""
    if kernel == "fused":
        return adam(model, lr)
    groups = param_groups(model, 0.01)
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, foreach=kernel == "foreach", fused=False)


def batch(bs: int, size: int, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    """A random normalized-looking image batch and labels on ``device``."""
    x = torch.randn(bs, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (bs,), device=device)


def step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, bf16: bool, label_smoothing: float = 0.0
) -> None:
    """One training step: forward (autocast bf16 if asked), cross entropy, backward, optimizer step."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    bf16: bool,
    steps: int,
    warmup: int,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Images/s and ms per step over ``steps`` steps after ``warmup`` (the first step's seconds apart)."""
    device = x.device
    start = time.perf_counter()
    step(model, opt, x, y, bf16, label_smoothing)
    sync(device)
    first_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        step(model, opt, x, y, bf16, label_smoothing)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y, bf16, label_smoothing)
    sync(device)
    seconds = time.perf_counter() - start
    return {"ips": len(y) * steps / seconds, "step_ms": 1e3 * seconds / steps, "first_step_s": first_s}


def optimizer_ms(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, bf16: bool, steps: int) -> float:
    """Milliseconds of the optimizer step alone (on the gradients of one backward pass)."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        F.cross_entropy(model(x), y).backward()
    opt.step()  # warm-up: the state is created on the first step
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync(x.device)
    ms = 1e3 * (time.perf_counter() - start) / steps
    opt.zero_grad(set_to_none=True)
    return ms


def train_variants(
    arch: str,
    size: int,
    bs: int,
    steps: int,
    warmup: int,
    device: torch.device,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, dict[str, Any]]:
    """Per variant: images/s, ms per step, the optimizer's ms, peak device memory; ``speedup`` vs baseline."""
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        channels_last, bf16 = "channels_last" in name, "bf16" in name
        kernel = name.removeprefix("adamw_") if name.startswith("adamw_") else "fused"
        reset_peak(device)
        model = build(arch, device, channels_last)
        opt = optimizer(model, kernel)
        x, y = batch(bs, size, device, channels_last)
        figures: dict[str, Any] = time_steps(model, opt, x, y, bf16, steps, warmup)
        if kernel != "fused" or name == "baseline":
            figures["opt_ms"] = optimizer_ms(model, opt, x, y, bf16, steps)
        figures["peak_gib"] = peak_gib(device)
        if "baseline" in out:
            figures["speedup"] = figures["ips"] / out["baseline"]["ips"]
        out[name] = figures
        print(f"train {name}: {figures['ips']:.1f} images/s ({figures['step_ms']:.1f} ms/step)", flush=True)
        del model, opt, x, y
    return out


def _compiles() -> tuple[int, int]:
    """(graphs dynamo compiled, frames it was asked to convert) so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


def compile_check(
    arch: str,
    sizes: Sequence[int],
    bs: int,
    steps: int,
    warmup: int,
    device: torch.device,
    channels_last: bool | None = None,
    bf16: bool | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """torch.compile: compile seconds, images/s at ``sizes[0]``, and the recompiles of a progressive schedule.

    ``channels_last`` and ``bf16`` default to True on CUDA and False elsewhere.
    """
    fast = device.type == "cuda"
    channels_last = fast if channels_last is None else channels_last
    bf16 = fast if bf16 is None else bf16
    torch._dynamo.reset()
    reset_peak(device)
    model = build(arch, device, channels_last, compile=True)
    opt = optimizer(model)
    x, y = batch(bs, sizes[0], device, channels_last)
    graphs0, _ = _compiles()
    first = time_steps(model, opt, x, y, bf16, steps, warmup, label_smoothing)
    out: dict[str, Any] = {
        "size": sizes[0],
        "channels_last": channels_last,
        "bf16": bf16,
        "compile_s": first["first_step_s"],
        "ips": first["ips"],
        "step_ms": first["step_ms"],
        "peak_gib": peak_gib(device),
    }
    print(f"compile {arch} at {sizes[0]} px: {out['compile_s']:.1f} s, then {out['ips']:.1f} images/s", flush=True)
    inputs = {s: batch(bs, s, device, channels_last) for s in sizes}
    out["warmup_s"] = {}
    for s in sizes[1:]:  # each new size once: what a progressive schedule pays at its first epoch of that size
        start = time.perf_counter()
        step(model, opt, *inputs[s], bf16, label_smoothing)
        sync(device)
        out["warmup_s"][str(s)] = time.perf_counter() - start
    graphs, frames = _compiles()
    out["graphs_in_warmup"] = graphs - graphs0
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(steps):
        for s in sizes:
            start = time.perf_counter()
            step(model, opt, *inputs[s], bf16, label_smoothing)
            sync(device)
            times[s].append(time.perf_counter() - start)
    graphs_after, frames_after = _compiles()
    out["graphs_after_warmup"] = graphs_after - graphs
    out["frames_after_warmup"] = frames_after - frames
    out["ms_per_size"] = {str(s): 1e3 * statistics.median(t) for s, t in times.items()}
    out["slowest_step_vs_median"] = max(max(t) / statistics.median(t) for t in times.values())
    print(
        f"compile sizes {list(sizes)}: {out['graphs_in_warmup']} graph(s) in warm-up, "
        f"{out['graphs_after_warmup']} after; ms/step {out['ms_per_size']}",
        flush=True,
    )
    return out


def jpeg_files(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs under ``folder``, sorted and spread evenly over the whole listing (so over every class)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not files:
        raise FileNotFoundError(f"no JPEG files under {folder}")
    stride = max(len(files) // n, 1)
    return files[::stride][:n]


def decode_pil(files: Sequence[Path], presize: int) -> list[Tensor]:
    """The suite's decode: PIL (draft, RGB) -> centre square crop resized to ``presize`` -> uint8 tensor."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    from imagenette_sota.data.dataset import open_rgb
    from imagenette_sota.data.dataset import presize as crop_resize

    return [pil_to_tensor(crop_resize(open_rgb(f, presize), presize, (0.5, 0.5))) for f in files]


def decode_torchvision(files: Sequence[Path], presize: int | None, device: torch.device) -> list[Tensor]:
    """read_file each, decode_jpeg the whole list at once on ``device``, centre crop, resize (bilinear, antialias).

    ``presize=None``: the decoded images as they are (reading and decoding alone).
    """
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    datas = [read_file(str(f)) for f in files]
    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    if presize is None:
        return images
    out = []
    for img in images:
        h, w = img.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = img[:, top : top + side, left : left + side]
        out.append(resize(square, [presize, presize], antialias=True))
    return out


def decode_compare(files: Sequence[Path], presize: int, device: torch.device, repeats: int = 2) -> dict[str, Any]:
    """Images/s of the PIL path and of batched torchvision decoding (the best of ``repeats`` passes each)."""

    def best(fn) -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - start)
        return len(files) / min(seconds)

    decode_torchvision(files[:2], presize, device)  # first call: library and (on CUDA) nvJPEG start-up
    pil_ips = best(lambda: decode_pil(files, presize))
    tv_ips = best(lambda: decode_torchvision(files, presize, device))
    tv_decode_ips = best(lambda: decode_torchvision(files, None, device))
    out = {
        "images": len(files),
        "presize": presize,
        "pil_ips": pil_ips,
        "torchvision_ips": tv_ips,
        "torchvision_decode_only_ips": tv_decode_ips,
        "torchvision_device": str(device),
        "torchvision_vs_pil": tv_ips / pil_ips,
    }
    print(
        f"decode {len(files)} JPEGs to {presize} px: PIL {pil_ips:.0f} images/s, torchvision ({device}) "
        f"{tv_ips:.0f} ({tv_decode_ips:.0f} reading and decoding alone)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args()

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
        if args.jpeg_dir is None:
            from benchmarks.common import imagenette160

            args.jpeg_dir = imagenette160() / "train"
        figures["decode"] = decode_compare(jpeg_files(args.jpeg_dir, args.images), args.presize, device)
    report(figures)


if __name__ == "__main__":
    main()
