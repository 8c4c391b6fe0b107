"""torch.compile: compile seconds, images/s, and whether a progressive schedule's sizes recompile after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.fast_paths.device import peak_gib, reset_peak, sync
from benchmarks.fast_paths.train import batch, build, optimizer, step, time_steps


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
    out |= size_switches(model, opt, inputs, steps, bf16, label_smoothing, graphs0)
    print(
        f"compile sizes {list(sizes)}: {out['graphs_in_warmup']} graph(s) in warm-up, "
        f"{out['graphs_after_warmup']} after; ms/step {out['ms_per_size']}",
        flush=True,
    )
    return out


def size_switches(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: dict[int, tuple[Tensor, Tensor]],
    steps: int,
    bf16: bool,
    label_smoothing: float,
    graphs0: int,
) -> dict[str, Any]:
    """A compiled model's steps at each size of ``inputs`` (the first already compiled): each new size once (its
    ``warmup_s``), then the sizes alternated step by step ``steps`` times; the graphs dynamo built in each phase
    (``graphs0``: its count before the first compile) and the median ms per size."""
    out: dict[str, Any] = {"warmup_s": {}}
    sizes = list(inputs)
    for s in sizes[1:]:  # each new size once: what a progressive schedule pays at its first epoch of that size
        out["warmup_s"][str(s)] = _timed_step(model, opt, *inputs[s], bf16, label_smoothing)
    graphs, frames = _compiles()
    out["graphs_in_warmup"] = graphs - graphs0
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(steps):
        for s in sizes:
            times[s].append(_timed_step(model, opt, *inputs[s], bf16, label_smoothing))
    graphs_after, frames_after = _compiles()
    out["graphs_after_warmup"] = graphs_after - graphs
    out["frames_after_warmup"] = frames_after - frames
    out["ms_per_size"] = {str(s): 1e3 * statistics.median(t) for s, t in times.items()}
    out["slowest_step_vs_median"] = max(max(t) / statistics.median(t) for t in times.values())
    return out


def _timed_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, bf16: bool, label_smoothing: float
) -> float:
    """Seconds of one training step, the device's queued work included."""
    start = time.perf_counter()
    step(model, opt, x, y, bf16, label_smoothing)
    sync(x.device)
    return time.perf_counter() - start
