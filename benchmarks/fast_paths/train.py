"""The training-step variants: each fast-path switch (layout, bf16, AdamW kernel) against fp32 NCHW fused AdamW."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.fast_paths.device import peak_gib, reset_peak, sync
from imagenette_sota import models
from imagenette_sota.optim import BETAS, EPS
from imagenette_sota.schedule import adam, param_groups

VARIANTS = ("baseline", "channels_last", "bf16", "channels_last+bf16", "adamw_foreach", "adamw_single")


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
