"""The model-compute floor of a recipe: per-step times on random tensors x its step counts (no data, no Trainer)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from imagenette_sota import models
from imagenette_sota.schedule import adam

TRAIN_IMAGES, VAL_IMAGES = 9469, 3925
MINI_TRAIN, MINI_VAL = 200, 100


def step_times(
    arch: str, size: int, bs: int, val_bs: int, val_size: int, channels_last: bool, bf16: bool = False, reps: int = 8
) -> tuple[float, float]:
    """Seconds per train step at ``size`` and per eval step at ``val_size``, on random tensors (forward under bf16
    autocast if ``bf16``)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(models, arch)(10).to(memory_format=layout)
    opt = adam(model, 3e-3)
    x, y = torch.randn(bs, 3, size, size).contiguous(memory_format=layout), torch.randint(0, 10, (bs,))

    def train_step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    xv = torch.randn(val_bs, 3, val_size, val_size).contiguous(memory_format=layout)

    @torch.inference_mode()
    def eval_step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(xv)

    def per_step(step, train: bool) -> float:
        model.train(train)
        for _ in range(2):
            step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - start) / reps

    return per_step(train_step, True), per_step(eval_step, False)


def floor_seconds(
    arch: str,
    sizes: list[int],
    bs: int,
    val_bs: int,
    val_size: int,
    channels_last: bool,
    mini: bool = False,
    bf16: bool = False,
) -> dict[str, float]:
    """Model-compute floor: per-step times on random tensors x the recipe's step counts (``sizes``: per epoch)."""
    times = {s: step_times(arch, s, bs, val_bs, val_size, channels_last, bf16) for s in sorted(set(sizes))}
    t_eval = times[sizes[-1]][1]
    train, val = (MINI_TRAIN, MINI_VAL) if mini else (TRAIN_IMAGES, VAL_IMAGES)
    steps_train, steps_eval = train // bs, math.ceil(val / val_bs)
    return {
        "floor_train_ips": bs / times[sizes[-1]][0],
        "floor_eval_ips": val_bs / t_eval,
        "floor_s": sum(times[s][0] * steps_train + t_eval * steps_eval for s in sizes),
    }
