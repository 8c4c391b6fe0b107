"""The optimizer and one-cycle against fastai's definitions (fit_one_cycle, fine_tune, Adam with true_wd)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from imagenette_sota import quiet
from imagenette_sota.optim import Ranger
from imagenette_sota.schedule import (
    Cycle,
    FineTune,
    adam,
    fine_tune,
    flat_cos,
    one_cycle,
    param_groups,
    steps_per_epoch,
)

LR = 1e-2


def fastai_cos(start: float, end: float, pos: float) -> float:
    """fastai's sched_cos."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def fastai_value(pct: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """fastai's combined_cos at training position pct in [0, 1]."""
    if pct < pct_start:
        return fastai_cos(start, middle, pct / pct_start)
    return fastai_cos(middle, end, (pct - pct_start) / (1 - pct_start))


def net() -> nn.Module:
    """Convolution, batch norm and a linear head: weights of every rank, biases and norm parameters."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2), nn.Linear(2, 2))


def run(cycle: Cycle, n: int) -> tuple[list[float], list[float]]:
    """(lr, beta1) used at batches 0..n, n being the value after the last batch's step."""
    model = nn.Linear(2, 2)
    opt = adam(model, cycle.lr_max)
    sched = one_cycle(opt, cycle, n)
    lrs, moms = [], []
    for _ in range(n + 1):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        if len(lrs) <= n:
            opt.step()  # no gradients: only the schedule moves
            sched.step()
    return lrs, moms


def test_one_cycle_landmarks() -> None:
    n = 100
    lrs, moms = run(Cycle(LR), n)
    assert lrs[0] == pytest.approx(LR / 25, rel=1e-12)
    assert lrs[25] == pytest.approx(LR, rel=1e-12)  # fastai's peak: batch pct_start * n
    assert max(lrs) == lrs[25]
    assert lrs[n] == pytest.approx(LR / 1e5, rel=1e-9)  # the cycle ends after the last batch
    assert lrs[n - 1] < LR * 1e-3  # fastai's last batch sits one step before the end
    assert moms[0] == pytest.approx(0.95) and moms[25] == pytest.approx(0.85) and moms[n] == pytest.approx(0.95)
    assert min(moms) == moms[25]
    assert all(a < b for a, b in pairwise(lrs[:26]))  # warm up
    assert all(a > b for a, b in pairwise(lrs[25:]))  # anneal


@pytest.mark.parametrize(("n", "cycle"), [(100, Cycle(LR)), (37, Cycle(LR, pct_start=0.3, div=5.0))])
def test_one_cycle_equals_fastai_formula_at_every_batch(n: int, cycle: Cycle) -> None:
    lrs, moms = run(cycle, n)
    lo = cycle.lr_max / cycle.div_final
    for i in (*range(n), n):
        pct = i / n
        assert lrs[i] == pytest.approx(
            fastai_value(pct, cycle.pct_start, cycle.lr_max / cycle.div, cycle.lr_max, lo), rel=1e-9, abs=1e-15
        )
        assert moms[i] == pytest.approx(fastai_value(pct, cycle.pct_start, 0.95, 0.85, 0.95), rel=1e-9)


def test_a_new_cycle_restarts_lr_and_momentum_on_the_same_optimizer() -> None:
    model = nn.Linear(2, 2)
    opt = adam(model, LR)
    sched = one_cycle(opt, Cycle(LR), 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 1e5)
    second = Cycle(LR / 2, pct_start=0.3, div=5.0)
    sched = one_cycle(opt, second, 20)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2 / 5)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.95, 0.99))
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)  # peak at 0.3 * 20


def test_fine_tune_cycles() -> None:
    (frozen_epochs, frozen), (epochs, unfrozen) = fine_tune(5, 1e-3)
    assert (frozen_epochs, frozen) == (1, Cycle(1e-3, pct_start=0.99, div=25.0, div_final=1e5))
    assert (epochs, unfrozen) == (5, Cycle(5e-4, pct_start=0.3, div=5.0, div_final=1e5))
    assert fine_tune(3)[1][1].lr_max == pytest.approx(1e-3)  # fastai's default base_lr 2e-3, halved


def test_weight_decay_only_on_weights_of_rank_two_or_more() -> None:
    model = net()
    model(torch.zeros(1, 3, 5, 5))  # materialize the lazy layer
    model[4].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.01)
    expect = {id(p) for p in model.parameters() if p.requires_grad and p.ndim >= 2}
    assert {id(p) for p in decay["params"]} == expect and len(expect) == 2  # conv and first linear weights
    assert {id(p) for p in no_decay["params"]} == {
        id(p) for p in (model[0].bias, model[1].weight, model[1].bias, model[3].bias, model[4].bias)
    }
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)


def test_adam_is_fastai_adam_with_true_weight_decay() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = adam(model, LR, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-5 and group["fused"]
    # One step by hand: decoupled decay p * (1 - lr * wd), then the debiased Adam update.
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    for p, p0, wd in zip(model.parameters(), before, (0.1, 0.0, 0.0, 0.0), strict=True):
        g = p.grad
        m, v = 0.1 * g / (1 - 0.9), 0.01 * g * g / (1 - 0.99)
        expect = p0 * (1 - LR * wd) - LR * m / (v.sqrt() + 1e-5)
        torch.testing.assert_close(p.detach(), expect)


@pytest.mark.parametrize(
    ("args", "steps"),
    [
        ((200, 50), 4),  # whole batches
        ((199, 50), 3),  # the last partial batch is dropped
        ((199, 50, False), 4),  # ... or kept
        ((1000, 10, True, 7), 7),  # limit_train_batches as a count
        ((1000, 10, True, 0.25), 25),  # ... or a fraction, rounded down
        ((1000, 10, True, 0.25, 4), 7),  # 25 batches, a step every 4: the last step takes 1 batch
    ],
)
def test_steps_per_epoch_counts_like_lightning(args: tuple, steps: int) -> None:
    assert steps_per_epoch(*args) == steps


def test_steps_per_epoch_equals_lightnings_estimate() -> None:
    """Lightning's own count of a real fit's optimizer steps, for a fraction and accumulation."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.rand(203, 2)), batch_size=8, drop_last=True)
    trainer = quiet.trainer(max_epochs=1, limit_train_batches=0.5, accumulate_grad_batches=3)
    trainer.fit(Net(), loader)
    assert trainer.global_step == steps_per_epoch(203, 8, True, 0.5, 3) == 4  # 25 batches -> 12 -> 4 steps


def test_fine_tune_starting_mid_fit() -> None:
    tune = FineTune(start_epoch=4, epochs=5, base_lr=1e-3)
    (_, frozen), (_, unfrozen) = fine_tune(5, 1e-3)
    assert tune.cycles() == {4: frozen, 5: unfrozen} and tune.end_epoch == 10
    assert FineTune(0, 3, freeze_epochs=2).cycles().keys() == {0, 2}


@pytest.mark.parametrize(("epochs", "pct_start"), [(3, 0.75), (4, 0.5)])
def test_flat_cos_lr_at_every_batch_is_fastai_fit_flat_cos(epochs: int, pct_start: float) -> None:
    # A real fastai Learner (its synthetic regression, 5 batches per epoch, ranger) records the lr of every batch
    # of fit_flat_cos; our cycle on our Ranger must give the same lr batch for batch, beta1 staying at mom.
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401 (they add fit_flat_cos and no_bar to the Learner)
    from fastai.optimizer import ranger
    from fastai.test_utils import synth_learner

    learn = synth_learner(n_trn=5)
    learn.opt_func = ranger
    with learn.no_bar(), learn.no_logging():
        learn.fit_flat_cos(epochs, LR, pct_start=pct_start)
    expected = list(learn.recorder.lrs)
    assert len(expected) == 5 * epochs and learn.opt.hypers[0]["mom"] == 0.95
    opt = Ranger(nn.Linear(2, 2).parameters())
    sched = one_cycle(opt, flat_cos(LR, pct_start=pct_start), len(expected))
    for i, lr in enumerate(expected):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-6), f"batch {i}"  # fastai's are float32
        assert opt.param_groups[0]["betas"] == (0.95, 0.99)
        opt.step()
        sched.step()
    flat = int(pct_start * len(expected))
    assert expected[:flat] == [LR] * flat and expected[-1] < LR / 4  # flat, then down (the test's own check)
